//! x86_64 (System V ABI) context switch.
//!
//! Register contract of `goro_stack_v0_1_switch(save: rdi, resume: rsi)`:
//! - on entry: rdi = where to store the current stack pointer, rsi = the stack pointer to
//!   resume, rsp = 8 mod 16 (the `call` pushed the return address onto a 16-aligned stack);
//! - callee-saved by the ABI, hence saved here: rbx, rbp, r12, r13, r14, r15 (and rsp itself,
//!   stored in `*save`);
//! - everything else (rax, rcx, rdx, rsi, rdi, r8-r11, xmm0-15, flags) is caller-saved: the
//!   compiler has already spilled whatever it needs before the `call`;
//! - not saved: the MXCSR and x87 control words. The ABI makes their control bits callee-saved,
//!   but Rust code does not change rounding modes or exception masks, so all contexts share the
//!   thread's defaults (as in corosensei and Go);
//! - on return into the resumed context: its rbx, rbp, r12-r15 and rsp are exactly what they
//!   were when it called `switch` (or the values `init_stack` prepared).
//!
//! Frame of a suspended context; the saved [`StackPointer`] points at its r15:
//!
//! ```text
//!            +------------------------+  higher addresses: the suspended frames
//!  sp + 48   | return address         |  pushed by the `call` to switch
//!  sp + 40   | rbp                    |
//!  sp + 32   | rbx                    |
//!  sp + 24   | r12                    |
//!  sp + 16   | r13                    |
//!  sp +  8   | r14                    |
//!  sp +  0   | r15                    |  <- saved StackPointer
//!            +------------------------+
//! ```
//!
//! A fresh stack from `init_stack` (top is 16-byte aligned):
//!
//! ```text
//!  top -  8  | 0                      |  padding
//!  top - 16  | 0                      |  padding; rsp here at the trampoline's `call` (16-aligned)
//!  top - 24  | trampoline             |  "return address" popped by the first switch's `ret`
//!  top - 32  | rbp = 0                |  terminates frame-pointer chains
//!  top - 40  | rbx = 0                |
//!  top - 48  | r12 = entry            |
//!  top - 56  | r13 = arg              |
//!  top - 64  | r14 = 0                |
//!  top - 72  | r15 = 0                |  <- returned StackPointer
//! ```

use super::StackPointer;
use core::arch::global_asm;

// The symbol names carry the crate version so that two versions of goro-stack can be linked into
// one program; `.hidden` keeps them out of any dynamic symbol table.
global_asm!(
    ".text",
    ".balign 16",
    ".globl goro_stack_v0_1_switch",
    ".hidden goro_stack_v0_1_switch",
    ".type goro_stack_v0_1_switch, @function",
    "goro_stack_v0_1_switch:",
    ".cfi_startproc",
    // CFA = rsp + 8 on entry (the return address is at rsp).
    "push rbp",                     // save rbp (frame pointer, callee-saved)
    ".cfi_adjust_cfa_offset 8",
    ".cfi_rel_offset rbp, 0",
    "push rbx",                     // save rbx
    ".cfi_adjust_cfa_offset 8",
    ".cfi_rel_offset rbx, 0",
    "push r12",                     // save r12
    ".cfi_adjust_cfa_offset 8",
    ".cfi_rel_offset r12, 0",
    "push r13",                     // save r13
    ".cfi_adjust_cfa_offset 8",
    ".cfi_rel_offset r13, 0",
    "push r14",                     // save r14
    ".cfi_adjust_cfa_offset 8",
    ".cfi_rel_offset r14, 0",
    "push r15",                     // save r15; rsp now points at the saved registers
    ".cfi_adjust_cfa_offset 8",
    ".cfi_rel_offset r15, 0",
    "mov [rdi], rsp",               // *save = rsp: the current context is suspended
    // The resumed stack has the same frame shape, so the CFI above stays true after the swap.
    "mov rsp, rsi",                 // rsp = resume: now on the other context's stack
    "pop r15",                      // restore its r15
    ".cfi_adjust_cfa_offset -8",
    ".cfi_restore r15",
    "pop r14",                      // restore its r14
    ".cfi_adjust_cfa_offset -8",
    ".cfi_restore r14",
    "pop r13",                      // restore its r13
    ".cfi_adjust_cfa_offset -8",
    ".cfi_restore r13",
    "pop r12",                      // restore its r12
    ".cfi_adjust_cfa_offset -8",
    ".cfi_restore r12",
    "pop rbx",                      // restore its rbx
    ".cfi_adjust_cfa_offset -8",
    ".cfi_restore rbx",
    "pop rbp",                      // restore its rbp
    ".cfi_adjust_cfa_offset -8",
    ".cfi_restore rbp",
    "ret",                          // return into it (or into the trampoline, the first time)
    ".cfi_endproc",
    ".size goro_stack_v0_1_switch, . - goro_stack_v0_1_switch",
    //
    // Entered by the first switch's `ret` with rsp = top - 16, r12 = entry, r13 = arg, rbp = 0.
    ".balign 16",
    ".globl goro_stack_v0_1_trampoline",
    ".hidden goro_stack_v0_1_trampoline",
    ".type goro_stack_v0_1_trampoline, @function",
    "goro_stack_v0_1_trampoline:",
    ".cfi_startproc",
    ".cfi_undefined rip",           // no caller: unwinders and backtraces stop here
    "mov rdi, r13",                 // first argument: arg
    "call r12",                     // entry(arg), rsp 16-byte aligned; never returns
    "ud2",                          // entry returned: trap (SIGILL) rather than run off the end
    ".cfi_endproc",
    ".size goro_stack_v0_1_trampoline, . - goro_stack_v0_1_trampoline",
);

unsafe extern "C" {
    /// The switch above; see the register contract in the module docs.
    fn goro_stack_v0_1_switch(save: *mut StackPointer, resume: StackPointer);
    /// The trampoline above; only its address is used, it is never called from Rust.
    fn goro_stack_v0_1_trampoline();
}

/// Writes the initial frame drawn in the module docs.
///
/// # Safety
/// May be called only if `top` is 16-byte aligned and the 72 bytes below it are writable and
/// owned by the caller (plus the rest of [`super::init_stack`]'s contract).
#[inline]
pub(super) unsafe fn init_stack(
    top: *mut u8,
    entry: unsafe extern "C" fn(usize) -> !,
    arg: usize,
) -> StackPointer {
    debug_assert_eq!(top as usize % 16, 0, "top {top:p} not 16-byte aligned");
    let words: [usize; 9] = [
        0,                                          // r15
        0,                                          // r14
        arg,                                        // r13
        entry as usize,                             // r12
        0,                                          // rbx
        0,                                          // rbp
        goro_stack_v0_1_trampoline as *const () as usize,        // return address
        0,                                          // padding
        0,                                          // padding
    ];
    let sp = top.wrapping_sub(size_of_val(&words)).cast::<[usize; 9]>();
    // SAFETY: the caller guarantees the 72 bytes below `top` are ours and writable; `sp` is
    // 8-byte aligned because `top` is 16-byte aligned.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Stack;
    use core::arch::asm;

    struct Regs {
        main: StackPointer,
        co: StackPointer,
    }

    unsafe extern "C" fn hold_registers(arg: usize) -> ! {
        let regs = arg as *mut Regs;
        loop {
            // SAFETY: `regs` outlives the coroutine; rdi/rsi are the switch arguments, r12-r15
            // and rbx are loaded with marker values that the switch must push where the module
            // docs say; clobber_abi("C") covers everything the callee may clobber.
            unsafe {
                asm!(
                    // rbx is reserved by LLVM: save it by hand (keeping rsp 16-byte aligned).
                    "push rbx",
                    "sub rsp, 8",
                    "mov rbx, 0x1111",
                    "mov r12, 0x1212",
                    "mov r13, 0x1313",
                    "mov r14, 0x1414",
                    "mov r15, 0x1515",
                    "call {sw}",
                    // After the resume the callee-saved registers must hold the markers again.
                    "cmp rbx, 0x1111", "jne 2f",
                    "cmp r12, 0x1212", "jne 2f",
                    "cmp r13, 0x1313", "jne 2f",
                    "cmp r14, 0x1414", "jne 2f",
                    "cmp r15, 0x1515", "jne 2f",
                    "jmp 3f",
                    "2: ud2",
                    "3:",
                    "add rsp, 8",
                    "pop rbx",
                    sw = sym goro_stack_v0_1_switch,
                    in("rdi") &raw mut (*regs).co,
                    in("rsi") (*regs).main.0,
                    out("r12") _, out("r13") _, out("r14") _, out("r15") _,
                    clobber_abi("C"),
                );
            }
        }
    }

    #[test]
    fn saved_registers_sit_at_the_saved_stack_pointer() {
        let stack = Stack::new().unwrap();
        let mut regs = Regs { main: StackPointer(core::ptr::null_mut()), co: StackPointer(core::ptr::null_mut()) };
        let r = &raw mut regs;
        // SAFETY: fresh stack, Regs outlives the coroutine.
        unsafe { (*r).co = init_stack(stack.top(), hold_registers, r as usize) };
        for _ in 0..3 {
            // SAFETY: each suspended pointer is resumed once.
            unsafe { switch(&raw mut (*r).main, (*r).co) };
            // SAFETY: the coroutine is suspended; `regs` is ours and its frame is readable.
            let (sp, words) = unsafe { ((*r).co.0, (*r).co.0.cast::<[usize; 6]>().read()) };
            assert_eq!(words[..5], [0x1515, 0x1414, 0x1313, 0x1212, 0x1111]);
            let sp = sp as usize;
            assert!(sp >= stack.limit() as usize && sp < stack.top() as usize);
        }
    }
}
