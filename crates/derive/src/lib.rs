//! goro's procedural macros: `#[derive(Trace)]` and `select!`.
//!
//! - [`macro@Trace`] (`trace.rs`) writes `Trace::trace` as a call on every field and rejects, at
//!   compile time and with an error on the offending part of the user's code, what would make
//!   the impl unsound: unions, `#[repr(packed)]`, fields without `Trace` (a `Gc` in a `Cell`,
//!   `RefCell`, `Mutex`, `RwLock` or `Rc` gets a message naming `GcCell` or `Gc`), and a user
//!   `Drop` impl. `trace.rs` opens with the rules and why each holds.
//! - [`select!`](macro@select) (`select.rs`) expands Go's `select` into calls of
//!   `goro::chan::__select`.
//!
//! The path of the collector crate defaults to `::goro::gc`; code that uses `goro-gc` directly
//! writes `#[trace(crate = "::goro_gc")]` (or `"crate"` inside it). The compile-fail tests of
//! every rejection, with their messages, are the workspace's `tests/ui`.

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

mod select;
mod trace;

/// Derives `Trace` for a struct or enum whose fields all implement `Trace`.
///
/// ```text
/// #[derive(goro::Trace)]
/// struct Node { left: Option<Gc<Node>>, right: Option<Gc<Node>>, value: u64 }
/// ```
///
/// Every type parameter gets a `Trace` bound. Rejected, each with an error on the user's code:
/// a union; `#[repr(packed)]`; a field whose type has no `Trace` impl (for a `Gc` inside a
/// `Cell`, `RefCell` or `Mutex`, use `goro::gc::GcCell`; inside an `Rc`, use `Gc`); an
/// `impl Drop` for the type (the collector drops it while sweeping, when what its `Gc`s point
/// to may be gone).
#[proc_macro_derive(Trace, attributes(trace))]
pub fn derive_trace(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match trace::expand(input) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

/// Go's `select`: waits on several channel operations and runs the one that proceeds.
///
/// ```text
/// goro::select! {
///     recv(rx) -> value => println!("got {value:?}"),      // value: Option<T>, None once closed
///     send(tx, 42) -> () => println!("sent"),               // panics if tx's channel is closed
///     recv(goro::chan::after(Duration::from_secs(1))) -> _ => println!("timeout"),
///     default => println!("nothing ready"),                 // optional: never block
/// }
/// ```
///
/// Among the operations that can proceed, one is chosen uniformly at random; without `default`,
/// the goroutine blocks until one can. `select! {}` blocks forever. The arms' values give the
/// value of the whole expression.
#[proc_macro]
pub fn select(input: TokenStream) -> TokenStream {
    let select = parse_macro_input!(input as select::Select);
    select.expand().into()
}
