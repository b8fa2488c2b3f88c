//! Go's `throw`: the runtime's one way to die on a broken invariant. Imports nothing of the
//! scheduler, so that every layer may call it.

/// A broken runtime invariant or an unrecoverable runtime failure: Go's `throw`. Prints
/// `fatal error: ...` and aborts; never unwinds (it may run on g0).
#[cold]
pub(crate) fn throw(message: &str) -> ! {
    eprintln!("fatal error: {message}");
    std::process::abort()
}
