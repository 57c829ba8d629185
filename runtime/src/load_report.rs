//! The report of a module that does not fit its checkpoint. A leaf: errors carry it, and
//! the module machinery that fills it in depends on errors.

use std::fmt;

/// What went wrong loading a module (see [`crate::Module::load`]): every problem at once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Paths the module needs that the checkpoint lacks.
    pub missing: Vec<String>,
    /// Paths the checkpoint has that the module does not use.
    pub unexpected: Vec<String>,
    /// (path, the module's shape, the checkpoint's shape).
    pub mismatched: Vec<(String, Vec<i32>, Vec<i32>)>,
    /// (path, what is wrong): tensors stored in a form the model cannot take (an integer
    /// dtype for a float weight, a quantized layout that does not fit), found by the model's
    /// own checks before loading.
    pub wrongly_stored: Vec<(String, String)>,
}

/// How many paths of one kind of problem the message names; the report has them all.
const NAMED: usize = 8;

impl LoadReport {
    /// No problem at all.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.mismatched.is_empty()
            && self.wrongly_stored.is_empty()
    }
}

impl fmt::Display for LoadReport {
    /// One line: each kind of problem with its count and up to eight of its paths.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shapes: Vec<String> = self
            .mismatched
            .iter()
            .map(|(path, expected, found)| {
                format!("{path} (expected {expected:?}, found {found:?})")
            })
            .collect();
        let stored: Vec<String> = self
            .wrongly_stored
            .iter()
            .map(|(path, problem)| format!("{path} ({problem})"))
            .collect();
        f.write_str("the checkpoint does not fit the model:")?;
        let mut separator = " ";
        for (kind, paths) in [
            ("missing", &self.missing),
            ("unexpected", &self.unexpected),
            ("wrongly shaped", &shapes),
            ("wrongly stored", &stored),
        ] {
            if paths.is_empty() {
                continue;
            }
            let named = paths[..paths.len().min(NAMED)].join(", ");
            write!(f, "{separator}{} {kind}: {named}", paths.len())?;
            if paths.len() > NAMED {
                write!(f, " and {} more", paths.len() - NAMED)?;
            }
            separator = "; ";
        }
        Ok(())
    }
}
