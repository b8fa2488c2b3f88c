//! Helpers shared by the scheduler's test files.

#![allow(dead_code, reason = "each test file uses a different subset")]

use goro_sched::{Config, run};

/// Runs `f` as the main goroutine of a runtime with `procs` Ps and returns its value.
pub fn on<R: Send + 'static>(procs: usize, f: impl FnOnce() -> R + Send + 'static) -> R {
    let config = Config {
        procs,
        stack_size: 1 << 20,
        ..Config::default()
    };
    run(config, f).into_result().unwrap()
}

/// The message of a string panic payload.
pub fn message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .expect("a string panic payload")
}
