//! Modules: structs whose fields are weights, loaded from checkpoints by path and handed to
//! compiled graphs as inputs.
//!
//! `#[derive(mlx::Module)]` implements [`Module`] for a struct of `Array`s, optional arrays,
//! nested modules and `Vec`s of modules, or for an enum whose variants each hold one module
//! (a layer that is dense or quantized). Field attributes:
//! `#[weight("to_out.0")]` names a field in the checkpoint, `#[weight(skip)]` marks a
//! configuration field (it must be `Clone + Debug`).

pub use crate::load_report::LoadReport;

use crate::io::Checkpoint;
use crate::{Array, Error, Result};

/// A tree of arrays with checkpoint paths. See the [module documentation](self).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is neither an array nor a module",
    label = "not an `Array`, a `#[derive(Module)]` type, or an `Option`, `Vec` or `Box` of one",
    note = "in a `#[derive(Module)]` struct, mark configuration fields with `#[weight(skip)]`; \
            in an `#[mlx::graph]` signature, static arguments are integers, floats, bools or \
            parameters marked `#[mlx(static)]`"
)]
pub trait Module {
    /// Calls `f` with every array and its path: `prefix` and field names joined by `.`,
    /// `Vec` elements by their index.
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a Array));

    /// A copy whose arrays are taken, in [`visit`](Module::visit) order, from `arrays`
    /// (what tracing a compiled graph needs). Missing arrays become failed arrays.
    fn rebuild(&self, arrays: &mut dyn Iterator<Item = Array>) -> Self
    where
        Self: Sized;

    /// Replaces every array with the checkpoint's tensor at its path (cast to the array's
    /// dtype), taking it out of `source`; records missing and mis-shaped tensors.
    fn load_from(&mut self, prefix: &str, source: &mut Checkpoint, report: &mut LoadReport);

    /// Writes what the arrays' shapes and dtypes don't tell about the module: configuration
    /// values, `Vec` lengths, enum variants. Compiled graphs key their cache on it.
    fn structure(&self, out: &mut String);

    /// Every array with its path.
    fn parameters(&self) -> Vec<(String, &Array)> {
        let mut out = Vec::new();
        self.visit("", &mut |path, array| out.push((path.to_string(), array)));
        out
    }

    /// The number of elements of all arrays.
    fn num_parameters(&self) -> usize {
        let mut n = 0;
        self.visit("", &mut |_, array| n += array.size());
        n
    }

    /// The bytes of all arrays.
    fn nbytes(&self) -> usize {
        let mut n = 0;
        self.visit("", &mut |_, array| n += array.nbytes());
        n
    }

    /// Loads every array from `source` and reports all problems at once: tensors the module
    /// needs that `source` lacks, tensors `source` has that the module does not use, and
    /// tensors whose shape differs.
    fn load(&mut self, mut source: Checkpoint) -> Result<()>
    where
        Self: Sized,
    {
        let mut report = LoadReport::default();
        self.load_from("", &mut source, &mut report);
        report.unexpected = source.names().map(str::to_owned).collect();
        if report.is_clean() {
            Ok(())
        } else {
            Err(Error::Load(report))
        }
    }
}

/// `prefix.name`, or `name` at the root.
pub fn join_path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// The array a rebuild gets when the iterator runs out: a failed array, not a panic.
fn missing_array(what: &str) -> Array {
    Array::failed(Error::Runtime {
        op: "rebuild",
        message: format!("no array left for {what}"),
        location: std::panic::Location::caller(),
    })
}

impl Module for Array {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a Array)) {
        f(prefix, self);
    }

    fn rebuild(&self, arrays: &mut dyn Iterator<Item = Array>) -> Array {
        arrays.next().unwrap_or_else(|| missing_array("an array"))
    }

    fn load_from(&mut self, prefix: &str, source: &mut Checkpoint, report: &mut LoadReport) {
        match source.take(prefix) {
            None => report.missing.push(prefix.to_string()),
            Some(found) if found.shape() != self.shape() => report.mismatched.push((
                prefix.to_string(),
                self.shape().to_vec(),
                found.shape().to_vec(),
            )),
            Some(found) => *self = found.astype(self.dtype()),
        }
    }

    fn structure(&self, _out: &mut String) {}
}

impl<M: Module> Module for Option<M> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a Array)) {
        if let Some(m) = self {
            m.visit(prefix, f);
        }
    }

    fn rebuild(&self, arrays: &mut dyn Iterator<Item = Array>) -> Self {
        self.as_ref().map(|m| m.rebuild(arrays))
    }

    fn load_from(&mut self, prefix: &str, source: &mut Checkpoint, report: &mut LoadReport) {
        // An absent optional part loads nothing; what the checkpoint has for it stays
        // unexpected.
        if let Some(m) = self {
            m.load_from(prefix, source, report);
        }
    }

    fn structure(&self, out: &mut String) {
        match self {
            Some(m) => {
                out.push_str("Some(");
                m.structure(out);
                out.push(')');
            }
            None => out.push_str("None"),
        }
    }
}

impl<M: Module> Module for Vec<M> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a Array)) {
        for (i, m) in self.iter().enumerate() {
            m.visit(&join_path(prefix, &i.to_string()), f);
        }
    }

    fn rebuild(&self, arrays: &mut dyn Iterator<Item = Array>) -> Self {
        self.iter().map(|m| m.rebuild(arrays)).collect()
    }

    fn load_from(&mut self, prefix: &str, source: &mut Checkpoint, report: &mut LoadReport) {
        for (i, m) in self.iter_mut().enumerate() {
            m.load_from(&join_path(prefix, &i.to_string()), source, report);
        }
    }

    fn structure(&self, out: &mut String) {
        out.push_str(&format!("[{}](", self.len()));
        for m in self {
            m.structure(out);
            out.push(',');
        }
        out.push(')');
    }
}

impl<M: Module> Module for Box<M> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a Array)) {
        (**self).visit(prefix, f);
    }

    fn rebuild(&self, arrays: &mut dyn Iterator<Item = Array>) -> Self {
        Box::new((**self).rebuild(arrays))
    }

    fn load_from(&mut self, prefix: &str, source: &mut Checkpoint, report: &mut LoadReport) {
        (**self).load_from(prefix, source, report);
    }

    fn structure(&self, out: &mut String) {
        (**self).structure(out);
    }
}
