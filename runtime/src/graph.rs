//! Runtime support of `#[mlx::graph]`: per-function caches of compiled closures, and the
//! traits that turn outputs into lists of arrays and back.
//!
//! A graph function's cache key is what the inputs' arrays cannot tell MLX: the structure
//! of module arguments ([`Module::structure`]: configuration values, `Vec` lengths, enum
//! variants) and the values of static arguments. Each key gets its own [`Compiled`], and
//! MLX traces that once per input signature (shapes and dtypes). Weights are inputs, not
//! captured constants: the closure holds only a *skeleton* of each module (its structure,
//! with placeholder arrays), so one compiled closure serves every layer of the same shapes
//! and keeps no weights alive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::compile::Body;
use crate::{Array, Compiled, Error, Module, Result};

/// Keys in one cache past which a warning is logged: each key keeps a compiled closure.
const MANY_KEYS: usize = 64;

/// The compiled closures of one graph function, by cache key. Entries are never evicted:
/// static arguments should take few values.
pub struct GraphCache {
    name: &'static str,
    entries: OnceLock<Mutex<HashMap<String, Arc<Compiled>>>>,
}

impl GraphCache {
    /// An empty cache for the function `name`.
    pub const fn new(name: &'static str) -> GraphCache {
        GraphCache {
            name,
            entries: OnceLock::new(),
        }
    }

    /// The function's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Calls the closure compiled for `key`, first compiling `make()` if the key is new.
    #[track_caller]
    pub fn call(
        &self,
        key: String,
        shapeless: bool,
        inputs: &[&Array],
        make: impl FnOnce() -> Box<Body>,
    ) -> Result<Vec<Array>> {
        let compiled = {
            let mut entries = self
                .entries
                .get_or_init(Default::default)
                .lock()
                // A panic while holding the lock leaves a valid map (inserts are atomic).
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match entries.get(&key) {
                Some(compiled) => Arc::clone(compiled),
                None => {
                    let body = make();
                    let compiled = Arc::new(Compiled::new(shapeless, body)?);
                    entries.insert(key, Arc::clone(&compiled));
                    if entries.len() == MANY_KEYS {
                        tracing::warn!(
                            function = self.name,
                            keys = MANY_KEYS,
                            "a graph function has been compiled for {MANY_KEYS} different static \
                             arguments or module structures, and keeps every one: is an \
                             integer argument (a position, a step) changing on every call? \
                             Pass it as an array instead"
                        );
                    }
                    compiled
                }
            }
        };
        compiled.call(inputs)
    }

    /// Traces so far, over every key.
    pub fn trace_count(&self) -> u64 {
        self.entries.get().map_or(0, |entries| {
            entries
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .values()
                .map(|c| c.trace_count())
                .sum()
        })
    }
}

/// Runs a graph body eagerly (see [`crate::compile::set_eager`]): a panic comes back as
/// failed outputs carrying the error, as it does from a compiled call.
#[track_caller]
pub fn eager<T: GraphOutput>(body: impl FnOnce() -> T) -> T {
    let location = std::panic::Location::caller();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(outputs) => outputs,
        Err(payload) => T::failed(&Error::Runtime {
            op: "graph",
            message: format!(
                "the function panicked: {}",
                crate::compile::panic_message(&*payload)
            ),
            location,
        }),
    }
}

/// The module's structure with placeholder arrays: what a compiled closure keeps of a
/// module argument, so that it holds no weights.
pub fn skeleton<M: Module>(module: &M) -> M {
    module.rebuild(&mut std::iter::repeat_with(|| {
        Array::failed(Error::Runtime {
            op: "graph",
            message: "a placeholder array of a module skeleton was used".into(),
            location: std::panic::Location::caller(),
        })
    }))
}

/// What a graph function may return: arrays, tuples of them, `Vec<Array>`, and structs of
/// those with `#[derive(mlx::GraphOutput)]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be returned from an #[mlx::graph] function",
    label = "return `Array`, `Vec<Array>`, a tuple of those, or a `#[derive(GraphOutput)]` struct",
    note = "a compiled graph's outputs are arrays"
)]
pub trait GraphOutput: Sized {
    /// Appends the arrays, in order.
    fn flatten(self, out: &mut Vec<Array>);
    /// Rebuilds from arrays in the order of `flatten`. `Vec<Array>` takes all the rest.
    fn unflatten(arrays: &mut std::vec::IntoIter<Array>) -> Self;
    /// The value standing for a failed call: failed arrays carrying `error`.
    fn failed(error: &Error) -> Self;
}

impl GraphOutput for Array {
    fn flatten(self, out: &mut Vec<Array>) {
        out.push(self);
    }
    fn unflatten(arrays: &mut std::vec::IntoIter<Array>) -> Self {
        arrays.next().unwrap_or_else(|| {
            Array::failed(Error::Runtime {
                op: "graph",
                message: "the compiled graph returned fewer arrays than its signature".into(),
                location: std::panic::Location::caller(),
            })
        })
    }
    fn failed(error: &Error) -> Self {
        Array::failed(error.clone())
    }
}

impl GraphOutput for Vec<Array> {
    fn flatten(self, out: &mut Vec<Array>) {
        out.extend(self);
    }
    fn unflatten(arrays: &mut std::vec::IntoIter<Array>) -> Self {
        arrays.collect()
    }
    fn failed(error: &Error) -> Self {
        vec![Array::failed(error.clone())]
    }
}

macro_rules! tuple_output {
    ($($t:ident),+) => {
        impl<$($t: GraphOutput),+> GraphOutput for ($($t,)+) {
            #[allow(non_snake_case)]
            fn flatten(self, out: &mut Vec<Array>) {
                let ($($t,)+) = self;
                $($t.flatten(out);)+
            }
            fn unflatten(arrays: &mut std::vec::IntoIter<Array>) -> Self {
                ($($t::unflatten(arrays),)+)
            }
            fn failed(error: &Error) -> Self {
                ($($t::failed(error),)+)
            }
        }
    };
}
tuple_output!(A);
tuple_output!(A, B);
tuple_output!(A, B, C);
tuple_output!(A, B, C, D);
tuple_output!(A, B, C, D, E);

/// Flattens an output; what the generated trace closure returns.
pub fn flatten<T: GraphOutput>(value: T) -> Vec<Array> {
    let mut out = Vec::new();
    value.flatten(&mut out);
    out
}

/// Rebuilds an output from a call's result.
pub fn unflatten<T: GraphOutput>(result: Result<Vec<Array>>) -> T {
    match result {
        Ok(arrays) => T::unflatten(&mut arrays.into_iter()),
        Err(error) => T::failed(&error),
    }
}

macro_rules! tuple_module {
    ($($t:ident $i:tt),+) => {
        impl<$($t: Module),+> Module for ($($t,)+) {
            fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a Array)) {
                $(self.$i.visit(&crate::module::join_path(prefix, stringify!($i)), f);)+
            }
            fn rebuild(&self, arrays: &mut dyn Iterator<Item = Array>) -> Self {
                ($(self.$i.rebuild(arrays),)+)
            }
            fn load_from(
                &mut self,
                prefix: &str,
                source: &mut crate::io::Checkpoint,
                report: &mut crate::module::LoadReport,
            ) {
                $(self.$i.load_from(&crate::module::join_path(prefix, stringify!($i)), source, report);)+
            }
            fn structure(&self, out: &mut String) {
                out.push('(');
                $(self.$i.structure(out); out.push(',');)+
                out.push(')');
            }
        }
    };
}
tuple_module!(A 0, B 1);
tuple_module!(A 0, B 1, C 2);
tuple_module!(A 0, B 1, C 2, D 3);
