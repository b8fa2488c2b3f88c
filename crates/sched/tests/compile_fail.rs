//! What the public API must reject at compile time, each case with the compiler's message
//! (`tests/ui/*.stderr`; after a deliberate change, regenerate with `TRYBUILD=overwrite`).

#[test]
fn misuses_of_the_public_api_do_not_compile() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
