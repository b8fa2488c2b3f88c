//! Stacks that grow past their slot with `goro::stack::maybe_grow`: deep recursion on the default
//! 1 MiB slot returns the right answer at 1 and 2 Ps; panics and the collector's roots cross
//! segments; the maximum stack size ends the program with Go's message (in a child process).

use goro::gc::Gc;
use std::process::Command;

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

const FRAME_WORDS: usize = 12;
const RED_ZONE: usize = 32 << 10;

/// ~128-byte frames, growing a segment whenever fewer than `RED_ZONE` bytes are left.
#[inline(never)]
fn recurse(depth: u32) -> u64 {
    goro::stack::maybe_grow(RED_ZONE, || {
        let mut frame = [0u64; FRAME_WORDS];
        let slot = depth as usize % FRAME_WORDS;
        frame[slot] = u64::from(depth);
        std::hint::black_box(&mut frame);
        if depth == 0 {
            return frame[0];
        }
        recurse(depth - 1).wrapping_add(frame[slot])
    })
}

fn expected(depth: u32) -> u64 {
    u64::from(depth) * (u64::from(depth) + 1) / 2
}

#[test]
fn recursion_past_the_slot_returns_the_right_sum_at_1_and_2_ps() {
    for procs in [1, 2] {
        let runtime = goro::Runtime::builder().max_procs(procs).build().unwrap();
        runtime.run(|| {
            assert!(goro::stack::remaining_stack().unwrap() < 1 << 20);
            let handles: Vec<_> = (0..4)
                .map(|i| goro::go(move || recurse(100_000 + i)))
                .collect();
            for (i, handle) in handles.into_iter().enumerate() {
                assert_eq!(handle.join().unwrap(), expected(100_000 + i as u32));
            }
            // A goroutine grows again after its segments went back.
            assert_eq!(recurse(200_000), expected(200_000));
            assert_eq!(recurse(200_000), expected(200_000));
        });
    }
}

#[test]
fn outside_a_goroutine_maybe_grow_runs_in_place() {
    assert_eq!(goro::stack::remaining_stack(), None);
    assert_eq!(goro::stack::maybe_grow(RED_ZONE, || 7), 7);
}

#[test]
fn a_panic_on_a_segment_reaches_join_with_its_message() {
    fn dive(depth: u32) -> u32 {
        goro::stack::maybe_grow(RED_ZONE, || {
            let frame = std::hint::black_box([depth; 32]);
            if depth == 0 {
                panic!("bottom reached at frame {}", frame[3]);
            }
            dive(depth - 1) + frame[1]
        })
    }
    goro::Runtime::builder()
        .max_procs(1)
        .build()
        .unwrap()
        .run(|| {
            let panic = goro::go(|| dive(50_000)).join().unwrap_err();
            assert_eq!(panic.message(), Some("bottom reached at frame 0"));
            // The goroutine that panicked gave its segments back; this one still grows.
            assert_eq!(recurse(100_000), expected(100_000));
        });
}

#[test]
fn gc_values_in_frames_on_outer_segments_survive_a_collection() {
    /// Holds a `Gc` in every 1,000th frame; collects at the bottom, then checks on the way up.
    fn hold(depth: u32) -> u64 {
        goro::stack::maybe_grow(RED_ZONE, || {
            let held = depth
                .is_multiple_of(1000)
                .then(|| std::hint::black_box(Gc::new(u64::from(depth))));
            let below = if depth == 0 {
                goro::gc::collect();
                // Reuse whatever a wrong collection freed.
                let fillers: Vec<Gc<u64>> = (0..10_000).map(|_| Gc::new(u64::MAX)).collect();
                std::hint::black_box(&fillers);
                0
            } else {
                hold(depth - 1)
            };
            let mine = held.map_or(0, |gc| {
                assert_eq!(
                    *gc,
                    u64::from(depth),
                    "a Gc held on an outer segment was freed"
                );
                1
            });
            below + mine
        })
    }
    goro::Runtime::builder()
        .max_procs(2)
        .build()
        .unwrap()
        .run(|| assert_eq!(goro::go(|| hold(60_000)).join().unwrap(), 61));
}

#[test]
fn passing_the_maximum_stack_size_ends_the_program_like_go() {
    if std::env::var("GORO_GROWTH_CHILD").is_ok() {
        let runtime = goro::Runtime::builder()
            .max_stack_size(8 << 20)
            .build()
            .unwrap();
        runtime.run(|| {
            #[allow(
                unconditional_recursion,
                reason = "the child's scenario is the overflow"
            )]
            fn endless(depth: u64) -> u64 {
                goro::stack::maybe_grow(RED_ZONE, || {
                    let frame = std::hint::black_box([depth; 16]);
                    frame[1] + endless(depth + 1)
                })
            }
            let _ = goro::go(|| endless(0)).join();
        });
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "passing_the_maximum_stack_size_ends_the_program_like_go",
            "--nocapture",
        ])
        .env("GORO_GROWTH_CHILD", "1")
        .output()
        .expect("the child process");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("goroutine "))
        .unwrap_or_else(|| panic!("no overflow line in: {stderr}"));
    assert!(
        line.ends_with("stack exceeds 8388608-byte limit"),
        "stderr: {stderr}"
    );
    assert!(
        stderr.contains("fatal error: stack overflow"),
        "stderr: {stderr}"
    );
}

#[test]
fn a_maximum_below_the_slot_size_is_refused() {
    let error = goro::Runtime::builder()
        .stack_size(1 << 20)
        .max_stack_size(512 << 10)
        .build()
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "max_stack_size (524288 bytes) must be at least stack_size (1048576 bytes)"
    );
}
