// The select's internal trait and shared state are private.
use goro_sched::chan::SelectCase;
use goro_sched::chan::SelectShared;
use goro_sched::chan::__select::SelectCase as Reexported;

fn main() {}
