//! Without `GoroAlloc` as the global allocator, goro refuses to start and says how to fix it.

#[test]
fn run_refuses_to_start_and_names_the_fix() {
    let error = goro::Runtime::builder().build().unwrap_err();
    assert_eq!(error, goro::BuildError::NotGoroAllocator);
    assert!(
        error
            .to_string()
            .contains("#[global_allocator] static ALLOC: goro::alloc::GoroAlloc")
    );
    let panic = std::panic::catch_unwind(|| goro::run(|| ())).unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(
        message.starts_with("goro::run: the global allocator is not goro's"),
        "{message}"
    );
}
