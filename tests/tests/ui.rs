//! Compile-time behaviour through the `nimify` facade: each mistake is exactly one spanned error
//! (never a macro panic), and code that builds a wrong-shaped or wrong-typed input does not
//! compile. Re-bless with `TRYBUILD=overwrite cargo test -p nimify-tests --test ui`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}
