//! What `#[derive(Trace)]` and the `Trace` impls reject, with the messages that say why and where
//! (`tests/ui/*.stderr`), and what the derive's checks must still accept (`tests/ui/pass`).
//! Regenerate the messages with `TRYBUILD=overwrite`.

#[test]
fn trace_rejects_user_drop_packed_types_untraced_fields_and_std_cells_holding_gc() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
    cases.pass("tests/ui/pass/*.rs");
}
