//! Compile-time diagnostics of `#[mlx::graph]` and `#[derive(mlx::Module)]`: every misuse
//! in `tests/ui/fail` must fail with the message in its `.stderr`, and the supported forms
//! in `tests/ui/pass` must compile. Regenerate the messages with `TRYBUILD=overwrite`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
