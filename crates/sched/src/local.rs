//! Goroutine-local values ([`Local`], Go has none: `thread_local!` for goroutines). The storage
//! (`Locals`, a field of the G) is declared in `runtime2`; its behaviour is here.

use crate::runtime2::{GRef, LocalValue, Locals, current_g};

/// A goroutine-local value: each goroutine sees its own, created on first use by `init` and
/// dropped when the goroutine exits. It replaces `thread_local!` for code running on goroutines
/// (an M runs many goroutines, so its thread-locals are shared between them).
///
/// ```text
/// static COUNTER: goro::Local<std::cell::Cell<u32>> = goro::Local::new(|| std::cell::Cell::new(0));
/// COUNTER.with(|c| c.set(c.get() + 1));
/// ```
///
/// **At exit** (after the goroutine's closure has returned or unwound, on its own stack and
/// thread), its values are dropped one at a time, the last made first (as std drops
/// thread-locals); the others stay usable from the destructors. A destructor may use any local:
/// one still alive gives its value, one already dropped (or being dropped) or never used gets a
/// new value from `init`, which is dropped next. Exit ends when no value is left, so nothing of
/// the goroutine reaches the next one that reuses its G. A value made by a destructor is one
/// generation younger than the value being dropped; past four generations (POSIX's
/// `PTHREAD_DESTRUCTOR_ITERATIONS`, 4 in glibc) `with` panics instead of making a value (a
/// destructor that re-creates its own local would otherwise never end). A panic that escapes a
/// destructor at exit ends the program (`fatal error: a goroutine-local value's destructor
/// panicked`): it has no caller to unwind into.
pub struct Local<T: 'static> {
    init: fn() -> T,
}

/// How many generations of goroutine-locals destructors may make at exit (see [`Local`]).
pub(crate) const LOCAL_GENERATIONS_AT_EXIT: u32 = 4;

impl Locals {
    pub(crate) const fn new() -> Locals {
        Locals {
            values: Vec::new(),
            dropping: None,
        }
    }

    /// Whether the goroutine holds no value and is not exiting: the state a reused G starts in.
    pub(crate) fn is_empty(&self) -> bool {
        self.values.is_empty() && self.dropping.is_none()
    }

    fn get(&self, key: usize) -> Option<&dyn std::any::Any> {
        let found = self.values.iter().find(|v| v.key == key)?;
        Some(&*found.value)
    }
}

impl<T: 'static> Local<T> {
    /// A goroutine-local whose value starts as `init()` in each goroutine.
    pub const fn new(init: fn() -> T) -> Local<T> {
        Local { init }
    }

    /// Calls `f` with this goroutine's value.
    ///
    /// # Panics
    /// Panics when called outside a goroutine, and when called by a destructor at goroutine exit
    /// to make a value more than four generations deep (see [`Local`]).
    #[track_caller]
    pub fn with<R>(&'static self, f: impl FnOnce(&T) -> R) -> R {
        let Some(g) = current_g() else {
            panic!("goro::Local::with called outside a goroutine; use thread_local! there");
        };
        let key = std::ptr::from_ref(self) as usize;
        // SAFETY: only the running goroutine touches its locals, and the borrow ends with the
        // statement (the value itself is boxed).
        let value = match unsafe { (*g.g().locals.get()).get(key) } {
            Some(value) => std::ptr::from_ref(downcast::<T>(value)),
            None => self.make(g, key),
        };
        // SAFETY: the box lives until `drop_locals` pops it, which happens only at exit and
        // only between destructors, so not while this call (of the goroutine or of a
        // destructor) is running.
        f(unsafe { &*value })
    }

    /// Makes the running goroutine `g`'s value for the local at `key`, which it has none of.
    #[cold]
    fn make(&'static self, g: GRef, key: usize) -> *const T {
        let locals = g.g().locals.get();
        // SAFETY: only the running goroutine touches its locals; no borrow outlives the
        // statement.
        let generation = unsafe { (*locals).dropping }.map_or(0, |dropping| dropping + 1);
        if generation > LOCAL_GENERATIONS_AT_EXIT {
            panic!(
                "goro::Local::with: goroutine {} is exiting, and the destructors of its \
                 goroutine-locals have re-created locals {LOCAL_GENERATIONS_AT_EXIT} generations \
                 deep (the limit); does a destructor re-create the local it drops?",
                g.g().id()
            );
        }
        // `init` may use other locals (even this one): no borrow of the list across it.
        let value = Box::new((self.init)());
        // SAFETY: as above.
        if let Some(made) = unsafe { (*locals).get(key) } {
            // `init` used this local itself: the value it made stays, as later calls find it.
            let made = std::ptr::from_ref(downcast::<T>(made));
            drop(value);
            return made;
        }
        let made = std::ptr::from_ref::<T>(&value);
        // SAFETY: as above.
        unsafe {
            (*locals).values.push(LocalValue {
                key,
                generation,
                value,
            });
        }
        made
    }
}

fn downcast<T: 'static>(value: &dyn std::any::Any) -> &T {
    value
        .downcast_ref::<T>()
        .expect("a Local's value has its type")
}

/// Drops the exiting goroutine `g`'s locals, the last made first, each with the others still
/// usable, until none is left (the rule is in [`Local`]'s docs). Runs on the goroutine, after its
/// closure. Ends: a value of generation [`LOCAL_GENERATIONS_AT_EXIT`] cannot make more, so (as
/// long as each destructor returns) the values made at exit form a finite tree.
pub(crate) fn drop_locals(g: GRef) {
    let locals = g.g().locals.get();
    loop {
        // SAFETY: only the running goroutine touches its locals, and no borrow outlives the
        // statement: the destructors may use the list meanwhile.
        let Some(last) = (unsafe { (*locals).values.pop() }) else {
            break;
        };
        // SAFETY: as above.
        unsafe { (*locals).dropping = Some(last.generation) };
        drop(last.value);
    }
    // SAFETY: as above.
    unsafe { (*locals).dropping = None };
}

impl<T: 'static> std::fmt::Debug for Local<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local").finish_non_exhaustive()
    }
}
