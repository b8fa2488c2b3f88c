//! aarch64 (AAPCS64) context switch.
//!
//! Register contract of `goro_stack_v0_1_switch(save: x0, resume: x1)`:
//! - on entry: x0 = where to store the current stack pointer, x1 = the stack pointer to resume,
//!   x30 (lr) = return address, sp 16-byte aligned (always, on aarch64);
//! - callee-saved by the ABI, hence saved here: x19-x28, x29 (frame pointer), x30 (the return
//!   address), the low 64 bits of v8-v15 (d8-d15), and sp itself (stored in `*save`);
//! - everything else (x0-x18, the rest of the vector registers, flags) is caller-saved and has
//!   been spilled by the compiler before the call; x18 is the platform register and untouched;
//! - not saved: FPCR (rounding mode, as on x86_64 Rust never changes it);
//! - on return into the resumed context: its x19-x30, d8-d15 and sp are what they were when it
//!   called `switch`, and `ret` jumps to its x30.
//!
//! Frame of a suspended context (160 bytes, keeps sp 16-aligned); the saved [`StackPointer`]
//! points at its d8:
//!
//! ```text
//!  sp + 144  | x29, x30 (fp, return address) |
//!  sp + 128  | x27, x28                      |
//!  sp + 112  | x25, x26                      |
//!  sp +  96  | x23, x24                      |
//!  sp +  80  | x21, x22                      |
//!  sp +  64  | x19, x20                      |
//!  sp +  48  | d14, d15                      |
//!  sp +  32  | d12, d13                      |
//!  sp +  16  | d10, d11                      |
//!  sp +   0  | d8, d9                        |  <- saved StackPointer
//! ```
//!
//! A fresh stack from `init_stack` is the same frame at `top - 160`, all zeros except
//! x19 = entry, x20 = arg, x30 = trampoline; after the first switch sp = top (aligned) and the
//! trampoline calls `entry(arg)`. x29 = 0 ends frame-pointer chains.

use super::StackPointer;
use core::arch::global_asm;

// Symbol names carry the crate version (two versions may be linked into one program); `.hidden`
// keeps them out of dynamic symbol tables.
global_asm!(
    ".text",
    ".balign 16",
    ".globl goro_stack_v0_1_switch",
    ".hidden goro_stack_v0_1_switch",
    ".type goro_stack_v0_1_switch, %function",
    "goro_stack_v0_1_switch:",
    ".cfi_startproc",
    // CFA = sp on entry; the return address is in x30.
    "sub sp, sp, #160",             // room for the 20 saved registers
    ".cfi_def_cfa_offset 160",
    "stp x29, x30, [sp, #144]",     // save fp and the return address
    ".cfi_offset x29, -16",
    ".cfi_offset x30, -8",
    "stp x27, x28, [sp, #128]",     // save x27, x28
    ".cfi_offset x27, -32",
    ".cfi_offset x28, -24",
    "stp x25, x26, [sp, #112]",     // save x25, x26
    ".cfi_offset x25, -48",
    ".cfi_offset x26, -40",
    "stp x23, x24, [sp, #96]",      // save x23, x24
    ".cfi_offset x23, -64",
    ".cfi_offset x24, -56",
    "stp x21, x22, [sp, #80]",      // save x21, x22
    ".cfi_offset x21, -80",
    ".cfi_offset x22, -72",
    "stp x19, x20, [sp, #64]",      // save x19, x20
    ".cfi_offset x19, -96",
    ".cfi_offset x20, -88",
    "stp d14, d15, [sp, #48]",      // save d14, d15
    ".cfi_offset d14, -112",
    ".cfi_offset d15, -104",
    "stp d12, d13, [sp, #32]",      // save d12, d13
    ".cfi_offset d12, -128",
    ".cfi_offset d13, -120",
    "stp d10, d11, [sp, #16]",      // save d10, d11
    ".cfi_offset d10, -144",
    ".cfi_offset d11, -136",
    "stp d8, d9, [sp, #0]",         // save d8, d9; sp now points at the saved registers
    ".cfi_offset d8, -160",
    ".cfi_offset d9, -152",
    "mov x2, sp",                   // sp cannot be stored directly: copy it
    "str x2, [x0]",                 // *save = sp: the current context is suspended
    // The resumed stack has the same frame shape, so the CFI above stays true after the swap.
    "mov sp, x1",                   // sp = resume: now on the other context's stack
    "ldp d8, d9, [sp, #0]",         // restore its d8, d9
    "ldp d10, d11, [sp, #16]",      // restore its d10, d11
    "ldp d12, d13, [sp, #32]",      // restore its d12, d13
    "ldp d14, d15, [sp, #48]",      // restore its d14, d15
    "ldp x19, x20, [sp, #64]",      // restore its x19, x20
    "ldp x21, x22, [sp, #80]",      // restore its x21, x22
    "ldp x23, x24, [sp, #96]",      // restore its x23, x24
    "ldp x25, x26, [sp, #112]",     // restore its x25, x26
    "ldp x27, x28, [sp, #128]",     // restore its x27, x28
    "ldp x29, x30, [sp, #144]",     // restore its fp and return address
    "add sp, sp, #160",             // pop the frame
    ".cfi_def_cfa_offset 0",
    ".cfi_restore x19", ".cfi_restore x20", ".cfi_restore x21", ".cfi_restore x22",
    ".cfi_restore x23", ".cfi_restore x24", ".cfi_restore x25", ".cfi_restore x26",
    ".cfi_restore x27", ".cfi_restore x28", ".cfi_restore x29", ".cfi_restore x30",
    ".cfi_restore d8", ".cfi_restore d9", ".cfi_restore d10", ".cfi_restore d11",
    ".cfi_restore d12", ".cfi_restore d13", ".cfi_restore d14", ".cfi_restore d15",
    "ret",                          // return to x30 (the trampoline, the first time)
    ".cfi_endproc",
    ".size goro_stack_v0_1_switch, . - goro_stack_v0_1_switch",
    //
    // Entered by the first switch's `ret` with sp = top, x19 = entry, x20 = arg, x29 = 0.
    ".balign 16",
    ".globl goro_stack_v0_1_trampoline",
    ".hidden goro_stack_v0_1_trampoline",
    ".type goro_stack_v0_1_trampoline, %function",
    "goro_stack_v0_1_trampoline:",
    ".cfi_startproc",
    ".cfi_undefined x30",           // no caller: unwinders and backtraces stop here
    "mov x0, x20",                  // first argument: arg
    "blr x19",                      // entry(arg), sp 16-byte aligned; never returns
    "brk #1",                       // entry returned: trap rather than run off the end
    ".cfi_endproc",
    ".size goro_stack_v0_1_trampoline, . - goro_stack_v0_1_trampoline",
);

unsafe extern "C" {
    /// The switch above; see the register contract in the module docs.
    fn goro_stack_v0_1_switch(save: *mut StackPointer, resume: StackPointer);
    /// The trampoline above; only its address is used, it is never called from Rust.
    fn goro_stack_v0_1_trampoline();
}

/// Writes the initial frame described in the module docs.
///
/// # Safety
/// May be called only if `top` is 16-byte aligned and the 160 bytes below it are writable and
/// owned by the caller (plus the rest of [`super::init_stack`]'s contract).
#[inline]
pub(super) unsafe fn init_stack(
    top: *mut u8,
    entry: unsafe extern "C" fn(usize) -> !,
    arg: usize,
) -> StackPointer {
    debug_assert_eq!(top as usize % 16, 0, "top {top:p} not 16-byte aligned");
    let mut words = [0usize; 20];
    words[8] = entry as usize; // x19
    words[9] = arg; // x20
    words[19] = goro_stack_v0_1_trampoline as *const () as usize; // x30, the first "return address"
    let sp = top.wrapping_sub(size_of_val(&words)).cast::<[usize; 20]>();
    // SAFETY: the caller guarantees the 160 bytes below `top` are ours and writable; `sp` is
    // 16-byte aligned because `top` is.
    unsafe { sp.write(words) };
    StackPointer(sp.cast())
}

/// # Safety
/// Same contract as [`super::switch`].
#[inline(always)]
pub(super) unsafe fn switch(save: *mut StackPointer, resume: StackPointer) {
    // SAFETY: forwarded from the caller's contract; the asm follows the C ABI for this call.
    unsafe { goro_stack_v0_1_switch(save, resume) }
}
