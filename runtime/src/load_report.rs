//! The report of a module that does not fit its checkpoint. A leaf: errors carry it, and
//! the module machinery that fills it in depends on errors.

use std::fmt;

/// What went wrong loading a module (see [`crate::Module::load`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Paths the module needs that the checkpoint lacks.
    pub missing: Vec<String>,
    /// Paths the checkpoint has that the module does not use.
    pub unexpected: Vec<String>,
    /// (path, the module's shape, the checkpoint's shape).
    pub mismatched: Vec<(String, Vec<i32>, Vec<i32>)>,
}

impl LoadReport {
    /// No problem at all.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the checkpoint does not fit the module: {} missing, {} unexpected, {} wrongly shaped",
            self.missing.len(),
            self.unexpected.len(),
            self.mismatched.len()
        )?;
        for path in &self.missing {
            write!(f, "\n  missing:    {path}")?;
        }
        for path in &self.unexpected {
            write!(f, "\n  unexpected: {path}")?;
        }
        for (path, expected, found) in &self.mismatched {
            write!(
                f,
                "\n  shape:      {path}: expected {expected:?}, found {found:?}"
            )?;
        }
        Ok(())
    }
}
