//! The trampoline's machine code, assembled from this source at build time by rustc's
//! integrated assembler (AT&T syntax throughout, which sidesteps LLVM's Intel-syntax far-jump
//! bug #46048 that hermit documents).
//!
//! The code is position independent with respect to its page: it never contains the page's
//! address. Real-mode code addresses the parameter block through `DS = CS`; the two far jumps
//! go through far pointers the manager patches into the parameter block; 32- and 64-bit code
//! addresses the block relative to `EBX`/`R15` (the page base, computed from `CS` at entry),
//! and the exception stubs find it RIP-relatively. Every offset into the parameter block and
//! the status block is a `const` operand computed with `offset_of!`, so the assembly cannot
//! drift from the Rust structs.
//!
//! Sequence (SDM Vol. 3A, "Initializing IA-32e Mode" and "Switching to Protected Mode"):
//! 1. real mode: `cli`, `DS = CS`, stage 1, `lgdt`, `CR0.PE = 1`, far jump to 32-bit code;
//! 2. protected mode: flat data segments, stage 2, `CR4.PAE|OSFXSR|OSXMMEXCPT`, `CR3`,
//!    `EFER.LME` (and `NXE` when asked), `CR0.PG|MP`, `CR0.EM = 0`, far jump to 64-bit code;
//! 3. long mode: stage 3, `lidt`, `ltr`, record APIC ID (CPUID leaf 0Bh, else leaf 1) and TSC,
//!    load the stack, push a zero return address, `RDI` = boot info, stage 4, jump to entry.

use core::arch::global_asm;
use core::mem::offset_of;

use bootproto::StatusBlock;

use crate::{
    TrampolineParams, CR0_CLEAR_MASK, CR0_SET, CR4_SET, MSR_EFER, PARAMS_OFFSET, SEL_DATA, SEL_TSS,
    STAGE_JUMPING, STAGE_LONG, STAGE_PROTECTED, STAGE_REAL,
};

/// This CPU's APIC ID into `%esi`: the x2APIC ID from CPUID leaf 0Bh when the CPU has that
/// leaf, else the initial APIC ID from leaf 1 (EBX bits 31:24). SDM Vol. 3A, "Identifying
/// Logical Processors in an MP System". Clobbers EAX-EDX and the local labels 1 and 2; used
/// by the long-mode trampoline and the real-mode parking code alike.
macro_rules! read_apic_id_into_esi {
    () => {
        "
    xorl %eax, %eax
    cpuid
    cmpl $0xb, %eax
    jb 1f
    movl $0xb, %eax
    xorl %ecx, %ecx
    cpuid
    movl %edx, %esi
    jmp 2f
1:
    movl $1, %eax
    cpuid
    shrl $24, %ebx
    movl %ebx, %esi
2:
"
    };
}

global_asm!(
    r#"
    .pushsection .rodata.mk_trampoline, "a"
    .balign 16
    .global mk_trampoline_start
mk_trampoline_start:
.Lmk_base:
    .code16
    cli
    cld
    xorl %ebx, %ebx
    movw %cs, %bx
    movw %bx, %ds
    shll $4, %ebx
    movl ${stage_real}, {p_stage}
    lgdtl {p_gdtr}
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl *{p_pm32}

    .code32
    .global mk_trampoline_pm32
mk_trampoline_pm32:
    movw ${sel_data}, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movl ${stage_protected}, {p_stage}(%ebx)
    movl %cr4, %eax
    orl ${cr4_set}, %eax
    movl %eax, %cr4
    movl {p_cr3}(%ebx), %eax
    movl %eax, %cr3
    movl ${msr_efer}, %ecx
    rdmsr
    orl {p_efer}(%ebx), %eax
    wrmsr
    movl %cr0, %eax
    orl ${cr0_set}, %eax
    andl ${cr0_clear_mask}, %eax
    movl %eax, %cr0
    ljmpl *{p_lm64}(%ebx)

    .code64
    .global mk_trampoline_lm64
mk_trampoline_lm64:
    movl %ebx, %r15d
    movl ${stage_long}, {p_stage}(%r15)
    lidtq {p_idtr}(%r15)
    /* ltr faults on a busy TSS descriptor: clear the busy bit first, so running this page a
       second time (a replayed SIPI) cannot turn into a #GP with no usable IDT stack. */
    andb $0xfd, {p_tss_type}(%r15)
    movw ${sel_tss}, %ax
    ltr %ax
"#,
    read_apic_id_into_esi!(),
    r#"
    movl %esi, {p_apic}(%r15)
    rdtsc
    shlq $32, %rdx
    orq %rdx, %rax
    movq %rax, {p_tsc}(%r15)
    movq {p_stack}(%r15), %rsp
    pushq $0
    movq {p_boot_info}(%r15), %rdi
    movq {p_entry}(%r15), %rax
    movl ${stage_jumping}, {p_stage}(%r15)
    xorl %ebp, %ebp
    xorl %ebx, %ebx
    jmpq *%rax

    .macro MK_STUB v, err
    .balign 8
.Lmk_stub_\v:
    .if \err == 0
    pushq $0
    .endif
    pushq $\v
    jmp .Lmk_common
    .endm

    MK_STUB 0, 0
    MK_STUB 1, 0
    MK_STUB 2, 0
    MK_STUB 3, 0
    MK_STUB 4, 0
    MK_STUB 5, 0
    MK_STUB 6, 0
    MK_STUB 7, 0
    MK_STUB 8, 1
    MK_STUB 9, 0
    MK_STUB 10, 1
    MK_STUB 11, 1
    MK_STUB 12, 1
    MK_STUB 13, 1
    MK_STUB 14, 1
    MK_STUB 15, 0
    MK_STUB 16, 0
    MK_STUB 17, 1
    MK_STUB 18, 0
    MK_STUB 19, 0
    MK_STUB 20, 0
    MK_STUB 21, 1
    MK_STUB 22, 0
    MK_STUB 23, 0
    MK_STUB 24, 0
    MK_STUB 25, 0
    MK_STUB 26, 0
    MK_STUB 27, 0
    MK_STUB 28, 0
    MK_STUB 29, 1
    MK_STUB 30, 1
    MK_STUB 31, 0

    /* Stack on entry: vector, error code, RIP, CS, RFLAGS, RSP, SS (SDM Vol. 3A, "Exception
       and Interrupt Handling in 64-bit Mode", IA-32e interrupt stack frame). */
.Lmk_common:
    leaq .Lmk_base(%rip), %rax
    movq {p_status}(%rax), %rdx
    popq %rcx
    movq %rcx, {s_vector}(%rdx)
    popq %rcx
    movq %rcx, {s_error}(%rdx)
    movq (%rsp), %rcx
    movq %rcx, {s_rip}(%rdx)
    movq 24(%rsp), %rcx
    movq %rcx, {s_rsp}(%rdx)
    movq %cr2, %rcx
    movq %rcx, {s_cr2}(%rdx)
    movl ${state_faulted}, {s_state}(%rdx)
3:
    cli
    hlt
    jmp 3b

    .macro MK_STUB_OFFSET v
    .word .Lmk_stub_\v - .Lmk_base
    .endm
    .balign 2
    .global mk_trampoline_stub_table
mk_trampoline_stub_table:
    MK_STUB_OFFSET 0
    MK_STUB_OFFSET 1
    MK_STUB_OFFSET 2
    MK_STUB_OFFSET 3
    MK_STUB_OFFSET 4
    MK_STUB_OFFSET 5
    MK_STUB_OFFSET 6
    MK_STUB_OFFSET 7
    MK_STUB_OFFSET 8
    MK_STUB_OFFSET 9
    MK_STUB_OFFSET 10
    MK_STUB_OFFSET 11
    MK_STUB_OFFSET 12
    MK_STUB_OFFSET 13
    MK_STUB_OFFSET 14
    MK_STUB_OFFSET 15
    MK_STUB_OFFSET 16
    MK_STUB_OFFSET 17
    MK_STUB_OFFSET 18
    MK_STUB_OFFSET 19
    MK_STUB_OFFSET 20
    MK_STUB_OFFSET 21
    MK_STUB_OFFSET 22
    MK_STUB_OFFSET 23
    MK_STUB_OFFSET 24
    MK_STUB_OFFSET 25
    MK_STUB_OFFSET 26
    MK_STUB_OFFSET 27
    MK_STUB_OFFSET 28
    MK_STUB_OFFSET 29
    MK_STUB_OFFSET 30
    MK_STUB_OFFSET 31
    /* Pad the code area to exactly CODE_MAX bytes; if the code outgrew it, the assembler
       stops with "attempt to move .org backwards". */
    .org .Lmk_base + {code_max}, 0xcc
    .global mk_trampoline_end
mk_trampoline_end:
    .popsection
"#,
    stage_real = const STAGE_REAL,
    stage_protected = const STAGE_PROTECTED,
    stage_long = const STAGE_LONG,
    stage_jumping = const STAGE_JUMPING,
    sel_data = const SEL_DATA,
    sel_tss = const SEL_TSS,
    cr4_set = const CR4_SET,
    cr0_set = const CR0_SET,
    cr0_clear_mask = const CR0_CLEAR_MASK,
    msr_efer = const MSR_EFER,
    code_max = const crate::CODE_MAX,
    p_stage = const PARAMS_OFFSET + offset_of!(TrampolineParams, checkin_stage),
    p_gdtr = const PARAMS_OFFSET + offset_of!(TrampolineParams, gdtr),
    p_idtr = const PARAMS_OFFSET + offset_of!(TrampolineParams, idtr),
    // Type byte (byte 5) of the TSS descriptor, GDT slot 4 (SDM Vol. 3A, "TSS Descriptor").
    p_tss_type = const PARAMS_OFFSET + offset_of!(TrampolineParams, gdt) + 4 * 8 + 5,
    p_pm32 = const PARAMS_OFFSET + offset_of!(TrampolineParams, pm32_target),
    p_lm64 = const PARAMS_OFFSET + offset_of!(TrampolineParams, lm64_target),
    p_cr3 = const PARAMS_OFFSET + offset_of!(TrampolineParams, cr3),
    p_efer = const PARAMS_OFFSET + offset_of!(TrampolineParams, efer_or),
    p_stack = const PARAMS_OFFSET + offset_of!(TrampolineParams, stack_top),
    p_entry = const PARAMS_OFFSET + offset_of!(TrampolineParams, entry),
    p_boot_info = const PARAMS_OFFSET + offset_of!(TrampolineParams, boot_info),
    p_status = const PARAMS_OFFSET + offset_of!(TrampolineParams, status_block),
    p_apic = const PARAMS_OFFSET + offset_of!(TrampolineParams, checkin_apic_id),
    p_tsc = const PARAMS_OFFSET + offset_of!(TrampolineParams, checkin_tsc),
    s_state = const offset_of!(StatusBlock, state),
    s_vector = const offset_of!(StatusBlock, fault_vector),
    s_error = const offset_of!(StatusBlock, fault_error_code),
    s_rip = const offset_of!(StatusBlock, fault_rip),
    s_rsp = const offset_of!(StatusBlock, fault_rsp),
    s_cr2 = const offset_of!(StatusBlock, fault_cr2),
    state_faulted = const bootproto::state::FAULTED,
    options(att_syntax)
);

// The parking page: where a stopped instance's CPU goes to prove that it took the INIT.
//
// After INIT, a CPU sits in wait-for-SIPI, but the INIT is delivered asynchronously: until the
// target processes it, it may still be running the instance's code. The manager therefore
// follows the INIT with a SIPI to this page, whose code (real mode) records the CPU's APIC ID
// and a magic word, then halts with interrupts off. A SIPI is only accepted in wait-for-SIPI,
// so seeing the record proves the CPU has left the instance, and only then is its memory
// scrubbed. A later start sends INIT again, which brings the CPU back from the halt.
global_asm!(
    r#"
    .pushsection .rodata.mk_park, "a"
    .balign 16
    .global mk_park_start
mk_park_start:
    .code16
    cli
"#,
    read_apic_id_into_esi!(),
    r#"
    movw %cs, %ax
    movw %ax, %ds
    movl %esi, {park_apic}
    movl ${park_magic}, {park_mark}
3:
    hlt
    jmp 3b
    .global mk_park_end
mk_park_end:
    .code64
    .popsection
"#,
    park_apic = const crate::PARK_APIC_OFFSET,
    park_mark = const crate::PARK_MARK_OFFSET,
    park_magic = const crate::PARK_MAGIC,
    options(att_syntax)
);
