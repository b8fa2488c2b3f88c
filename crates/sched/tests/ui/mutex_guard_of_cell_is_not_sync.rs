// A shared `&MutexGuard<T>` lends `&T` to every thread holding it: the guard may be `Sync` only
// where `T` is.
fn shared_between_threads<T: Sync>() {}

fn main() {
    shared_between_threads::<goro_sched::sync::MutexGuard<'static, u8>>();
    shared_between_threads::<goro_sched::sync::MutexGuard<'static, std::cell::Cell<u8>>>();
}
