//! What `#[derive(Trace)]` and the `Trace` impls reject, with the messages that say why
//! (`tests/ui/*.stderr`). Regenerate the messages with `TRYBUILD=overwrite`.

#[test]
fn trace_rejects_user_drop_untraced_hashers_and_std_cells() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
