//! Context switches: data, registers, floats, recursion, unwinding and scanning on goroutine stacks.

mod common;

use common::Coro;
use core::cell::{Cell, RefCell};
use core::hint::black_box;
use goro_stack::{Stack, StackPointer, init_stack, switch};

#[test]
fn data_passes_back_and_forth() {
    let cell = Cell::new(0u64);
    let co = Coro::new(|y| {
        for i in 0..1000u64 {
            assert_eq!(
                cell.get(),
                2 * i,
                "main's value seen on the goroutine stack"
            );
            cell.set(cell.get() + 1);
            y.suspend();
        }
    });
    for _ in 0..1000 {
        assert!(co.resume());
        cell.set(cell.get() + 1);
    }
    assert!(!co.resume(), "the body has returned");
    assert_eq!(cell.get(), 2000);
}

/// Many live integers across every switch: the compiler keeps some in callee-saved registers,
/// which only survive if the switch restores them.
fn mix(y: Option<&common::Yielder>, seed: u64) -> u64 {
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = black_box([
        seed,
        seed ^ 1,
        seed ^ 2,
        seed ^ 3,
        seed ^ 4,
        seed ^ 5,
        seed ^ 6,
        seed ^ 7,
    ]);
    let (mut i, mut j, mut k, mut l) = black_box((seed + 8, seed + 9, seed + 10, seed + 11));
    for round in 0..200u64 {
        a = a.wrapping_mul(31).wrapping_add(b ^ round);
        b = b.rotate_left(7) ^ c;
        c = c.wrapping_add(d.wrapping_mul(3));
        d ^= e.rotate_right(11);
        e = e.wrapping_sub(f);
        f = f.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ g;
        g = g.wrapping_add(h) ^ i;
        h = h.rotate_left(3).wrapping_add(j);
        i ^= k.wrapping_mul(5);
        j = j.wrapping_add(l);
        k = k.rotate_left(13) ^ a;
        l = l.wrapping_mul(7) ^ round;
        if let Some(y) = y {
            y.suspend();
        }
    }
    a ^ b ^ c ^ d ^ e ^ f ^ g ^ h ^ i ^ j ^ k ^ l
}

#[test]
fn integer_registers_survive_switches() {
    let expected = mix(None, 42);
    let got = Cell::new(0);
    let other = Cell::new(0);
    let co = Coro::new(|y| got.set(mix(Some(y), 42)));
    // A second coroutine runs the same register-heavy code between the first one's steps.
    let co2 = Coro::new(|y| other.set(mix(Some(y), 42)));
    while co.resume() {
        co2.resume();
    }
    co2.resume();
    assert_eq!(got.get(), expected);
    assert_eq!(other.get(), expected);
}

fn float_mix(y: Option<&common::Yielder>, seed: f64) -> f64 {
    let [mut a, mut b, mut c, mut d, mut e, mut f] = black_box([
        seed,
        seed * 1.5,
        seed - 0.25,
        seed * seed,
        1.0 / seed,
        seed + 3.0,
    ]);
    for round in 0..100 {
        let r = f64::from(round);
        a = a.mul_add(0.999, b * 1e-3);
        b = (b + c).sin() + r;
        c = c * 0.5 + d.sqrt();
        d = d.abs() + e;
        e = e / 1.0001 - f * 1e-4;
        f = f.cos() * a;
        if let Some(y) = y {
            y.suspend();
        }
    }
    a + b + c + d + e + f
}

#[test]
fn float_state_survives_switches() {
    let expected = float_mix(None, 1.75);
    let got = Cell::new(0.0);
    let co = Coro::new(|y| got.set(float_mix(Some(y), 1.75)));
    let mut main_side = black_box(0.5f64);
    while co.resume() {
        main_side = (main_side * 1.01).sin() + 0.5;
    }
    assert_eq!(got.get().to_bits(), expected.to_bits());
    assert!(main_side.is_finite());
}

fn recurse(depth: u64, y: &common::Yielder, deepest: &Cell<usize>) -> u64 {
    let frame = black_box([depth; 8]);
    if depth == 0 {
        deepest.set(core::ptr::from_ref(&frame) as usize);
        y.suspend();
        return 1;
    }
    let below = recurse(depth - 1, y, deepest);
    black_box(below + frame[depth as usize % 8])
}

#[test]
fn deep_recursion_on_a_goroutine_stack() {
    let result = Cell::new(0);
    let deepest = Cell::new(0);
    // Unoptimised builds use a few hundred bytes per frame: give the recursion 1 MiB.
    let stack = Stack::with_size(1 << 20).unwrap();
    let co = Coro::with_stack(stack, |y| result.set(recurse(1000, y, &deepest)));
    assert!(co.resume());
    let (limit, top) = (co.stack().limit() as usize, co.stack().top() as usize);
    let sp = co.saved_sp().0 as usize;
    assert!(
        (limit..top).contains(&sp),
        "saved sp {sp:#x} outside [{limit:#x}, {top:#x})"
    );
    assert!((limit..top).contains(&deepest.get()));
    assert!(
        top - sp > 1000 * 64,
        "1000 frames of 64+ bytes lie below top"
    );
    assert!(!co.resume());
    assert_eq!(result.get(), 1 + (1..=1000).sum::<u64>());
}

struct PingPong {
    main: Cell<StackPointer>,
    a: Cell<StackPointer>,
    b: Cell<StackPointer>,
    log: RefCell<String>,
    rounds: usize,
}

unsafe extern "C" fn ping(arg: usize) -> ! {
    // SAFETY: `arg` is a PingPong that outlives both coroutines.
    let p = unsafe { &*(arg as *const PingPong) };
    for _ in 0..p.rounds {
        p.log.borrow_mut().push('a');
        // SAFETY: b's pointer is fresh or was saved by its last switch to us; resumed once.
        unsafe { switch(p.a.as_ptr(), p.b.get()) };
    }
    // SAFETY: main saved its pointer when it resumed us; resumed once.
    unsafe { switch(p.a.as_ptr(), p.main.get()) };
    std::process::abort()
}

unsafe extern "C" fn pong(arg: usize) -> ! {
    // SAFETY: as in `ping`.
    let p = unsafe { &*(arg as *const PingPong) };
    loop {
        p.log.borrow_mut().push('b');
        // SAFETY: a saved its pointer when it switched to us; resumed once.
        unsafe { switch(p.b.as_ptr(), p.a.get()) };
    }
}

#[test]
fn two_coroutines_ping_pong_directly() {
    let (sa, sb) = (Stack::new().unwrap(), Stack::new().unwrap());
    let null = StackPointer(core::ptr::null_mut());
    let p = PingPong {
        main: Cell::new(null),
        a: Cell::new(null),
        b: Cell::new(null),
        log: RefCell::new(String::new()),
        rounds: 500,
    };
    let arg = core::ptr::from_ref(&p) as usize;
    // SAFETY: fresh stacks that outlive the coroutines; each pointer is resumed once.
    unsafe {
        p.a.set(init_stack(sa.top(), ping, arg));
        p.b.set(init_stack(sb.top(), pong, arg));
        switch(p.main.as_ptr(), p.a.get());
    }
    assert_eq!(*p.log.borrow(), "ab".repeat(500));
    let b_sp = p.b.get().0 as usize;
    assert!((sb.limit() as usize..sb.top() as usize).contains(&b_sp));
}

#[test]
fn panic_caught_inside_the_goroutine() {
    let message = RefCell::new(String::new());
    let co = Coro::new(|y| {
        y.suspend();
        let caught = std::panic::catch_unwind(|| {
            // A few frames to unwind through, all on the goroutine stack.
            fn nested(n: u32) -> u32 {
                if n == 0 {
                    panic!("boom on a goroutine stack");
                }
                black_box(nested(n - 1)) + 1
            }
            nested(black_box(20))
        });
        let payload = caught.expect_err("the panic is caught");
        *message.borrow_mut() = payload.downcast_ref::<&str>().unwrap().to_string();
        y.suspend();
    });
    assert!(co.resume());
    assert!(co.resume());
    assert_eq!(*message.borrow(), "boom on a goroutine stack");
    assert!(!co.resume());
}

#[test]
fn backtrace_on_a_goroutine_stack_stops_at_the_trampoline() {
    let text = RefCell::new(String::new());
    let co = Coro::new(|_| {
        *text.borrow_mut() = std::backtrace::Backtrace::force_capture().to_string();
    });
    assert!(!co.resume());
    let text = text.borrow();
    assert!(text.contains("coro_entry"), "{text}");
    let last = text.lines().rev().find(|l| {
        l.trim_start()
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    });
    assert!(
        last.is_some_and(|l| l.contains("goro_stack_v0_1_trampoline")),
        "{text}"
    );
    // The walk must not continue past the trampoline into the test harness's frames.
    assert!(!text.contains("test::run_test"), "{text}");
}

#[test]
fn scanning_from_the_saved_sp_finds_a_suspended_local() {
    let seed = black_box(0x1234_5678u64);
    let co = Coro::new(|y| {
        // Computed on the goroutine, so the value exists nowhere else.
        let marker = black_box(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        y.suspend();
        black_box(marker);
    });
    assert!(co.resume());
    let expected = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let (sp, top) = (co.saved_sp().0 as usize, co.stack().top() as usize);
    assert_eq!(sp % 8, 0);
    let words = (top - sp) / 8;
    // SAFETY: [sp, top) is the live part of a suspended coroutine's stack, which we own; the
    // coroutine does not run while we read it.
    let live = unsafe { core::slice::from_raw_parts(sp as *const u64, words) };
    assert!(
        live.contains(&expected),
        "marker not found in [{sp:#x}, {top:#x})"
    );
    assert!(!co.resume());
}

#[test]
fn stacks_move_between_threads() {
    let stack = Stack::new().unwrap();
    let stack = std::thread::spawn(move || {
        let out = Cell::new(0);
        let co = Coro::with_stack(stack, |_| out.set(7));
        assert!(!co.resume());
        assert_eq!(out.get(), 7);
        Stack::new().unwrap()
    })
    .join()
    .unwrap();
    let out = Cell::new(0);
    let co = Coro::with_stack(stack, |_| out.set(8));
    assert!(!co.resume());
    assert_eq!(out.get(), 8);
}
