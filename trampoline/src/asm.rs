//! The start-up and parking code, assembled from this source at build time by rustc's
//! integrated assembler (AT&T syntax throughout, which sidesteps LLVM's Intel-syntax far-jump
//! bug #46048 that hermit documents).
//!
//! The code is position independent with respect to its page: it never contains the page's
//! address. Real-mode code addresses the start header through `DS = CS`; the two far jumps go
//! through far pointers the manager patches into the header; 32-bit code addresses the header
//! relative to `EBX` (the page base, computed from `CS` at entry), 64-bit code the slot relative
//! to `R14`, and the exception stubs find their slot from the stack pointer. Every offset into
//! the header, the CPU table, the slot and the status block is a `const` operand computed with
//! `offset_of!`, so the assembly cannot drift from the Rust structs.
//!
//! The sequence is described in the crate docs; the stages it records are `STAGE_*`.

use core::arch::global_asm;
use core::mem::{offset_of, size_of};

use bootproto::StatusBlock;

use crate::{
    CpuEntry, ParkLog, Slot, StartHeader, ARMED, CR0_CLEAR_MASK, CR0_SET, CR4_SET, HEADER_OFFSET,
    MSR_EFER, PAGE_SIZE, PARK_LOG_CAPACITY, SEL_DATA, SEL_TSS, STAGE_FOUND, STAGE_JUMPING,
    STAGE_LONG,
};

/// This CPU's APIC ID into `%esi`: the x2APIC ID from CPUID leaf 0Bh when the CPU has that
/// leaf, else the initial APIC ID from leaf 1 (EBX bits 31:24). SDM Vol. 3A, "Identifying
/// Logical Processors in an MP System". Clobbers EAX-EDX and the local labels 1 and 2; used
/// by the start-up code and the real-mode parking code alike.
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
    .pushsection .rodata.mk_start, "a"
    .balign 16
    .global mk_start_begin
mk_start_begin:
.Lmk_base:
    .code16
    cli
    cld
    xorl %ebx, %ebx
    movw %cs, %bx
    movw %bx, %ds
    shll $4, %ebx
    lock incl {h_entered}
    lgdtl {h_gdtr}
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl *{h_pm32}

    .code32
    .global mk_start_pm32
mk_start_pm32:
    movw ${sel_data}, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    /* CPUID clobbers EBX, which holds the page base: keep it in EBP meanwhile. */
    movl %ebx, %ebp
"#,
    read_apic_id_into_esi!(),
    r#"
    movl %ebp, %ebx
    /* Find the armed entry for this APIC ID in the CPU table. */
    movl {h_table}(%ebx), %edi
    movl {h_table_len}(%ebx), %ecx
10:
    testl %ecx, %ecx
    jz 15f
    cmpl %esi, {e_apic}(%edi)
    jne 11f
    cmpl ${armed}, {e_armed}(%edi)
    je 16f
11:
    addl ${e_size}, %edi
    decl %ecx
    jmp 10b
15:
    /* Nobody expects this CPU: count it and halt. */
    lock incl {h_strays}(%ebx)
    movl %esi, {h_stray_apic}(%ebx)
17:
    cli
    hlt
    jmp 17b
16:
    movl ${stage_found}, {e_stage}(%edi)
    rdtsc
    movl %eax, {e_tsc}(%edi)
    movl %edx, {e_tsc}+4(%edi)
    movl %cr4, %eax
    orl ${cr4_set}, %eax
    movl %eax, %cr4
    movl {e_cr3}(%edi), %eax
    movl %eax, %cr3
    movl ${msr_efer}, %ecx
    rdmsr
    orl {h_efer}(%ebx), %eax
    wrmsr
    /* The slot's address, low half in ESI and high half in EBP, for long mode. */
    movl {e_slot}(%edi), %esi
    movl {e_slot}+4(%edi), %ebp
    movl %cr0, %eax
    orl ${cr0_set}, %eax
    andl ${cr0_clear_mask}, %eax
    movl %eax, %cr0
    ljmpl *{h_lm64}(%ebx)

    .code64
    .global mk_start_lm64
mk_start_lm64:
    movl %ebx, %r15d
    shlq $32, %rbp
    movl %esi, %esi
    orq %rbp, %rsi
    movq %rsi, %r14
    lgdtq {s_gdtr}(%r14)
    lidtq {s_idtr}(%r14)
    /* ltr faults on a busy TSS descriptor: clear the busy bit first, so running the start-up
       code a second time on the same slot cannot turn into a #GP. */
    andb $0xfd, {s_tss_type}(%r14)
    /* A stack for the far return: the top of the slot (its exception stack). */
    leaq {page}(%r14), %rsp
    movzwl {s_cs}(%r14), %eax
    pushq %rax
    leaq 20f(%rip), %rax
    pushq %rax
    lretq
20:
    movzwl {s_ds}(%r14), %eax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movw ${sel_tss}, %ax
    ltr %ax
    movl ${stage_long}, {s_stage}(%r14)
"#,
    read_apic_id_into_esi!(),
    r#"
    movl %esi, {s_apic}(%r14)
    rdtsc
    shlq $32, %rdx
    orq %rdx, %rax
    movq %rax, {s_tsc}(%r14)
    movq {s_stack}(%r14), %rax
    testq %rax, %rax
    jz 21f
    movq %rax, %rsp
    pushq $0
21:
    movq {s_arg0}(%r14), %rdi
    movq {s_arg1}(%r14), %rsi
    movq {s_entry}(%r14), %rax
    movl ${stage_jumping}, {s_stage}(%r14)
    xorl %ebp, %ebp
    xorl %ebx, %ebx
    xorl %r14d, %r14d
    xorl %r15d, %r15d
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
       and Interrupt Handling in 64-bit Mode", IA-32e interrupt stack frame), on IST1: the top
       of this CPU's slot page, so rounding RSP down to the page finds the slot. */
.Lmk_common:
    movq %rsp, %rax
    andq $-{page}, %rax
    movq {s_status}(%rax), %rdx
    testq %rdx, %rdx
    jz 30f
    popq %rcx
    movq %rcx, {f_vector}(%rdx)
    popq %rcx
    movq %rcx, {f_error}(%rdx)
    movq (%rsp), %rcx
    movq %rcx, {f_rip}(%rdx)
    movq 24(%rsp), %rcx
    movq %rcx, {f_rsp}(%rdx)
    movq %cr2, %rcx
    movq %rcx, {f_cr2}(%rdx)
    movl {s_apic}(%rax), %ecx
    movl %ecx, {f_apic}(%rdx)
    movl ${state_faulted}, {f_state}(%rdx)
30:
    cli
    hlt
    jmp 30b

    .macro MK_STUB_OFFSET v
    .word .Lmk_stub_\v - .Lmk_base
    .endm
    .balign 2
    .global mk_start_stub_table
mk_start_stub_table:
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
    .global mk_start_end
mk_start_end:
    .popsection
"#,
    stage_found = const STAGE_FOUND,
    stage_long = const STAGE_LONG,
    stage_jumping = const STAGE_JUMPING,
    armed = const ARMED,
    sel_data = const SEL_DATA,
    sel_tss = const SEL_TSS,
    cr4_set = const CR4_SET,
    cr0_set = const CR0_SET,
    cr0_clear_mask = const CR0_CLEAR_MASK,
    msr_efer = const MSR_EFER,
    page = const PAGE_SIZE,
    code_max = const crate::CODE_MAX,
    h_entered = const HEADER_OFFSET + offset_of!(StartHeader, entered),
    h_gdtr = const HEADER_OFFSET + offset_of!(StartHeader, gdtr),
    h_pm32 = const HEADER_OFFSET + offset_of!(StartHeader, pm32_target),
    h_lm64 = const HEADER_OFFSET + offset_of!(StartHeader, lm64_target),
    h_table = const HEADER_OFFSET + offset_of!(StartHeader, table),
    h_table_len = const HEADER_OFFSET + offset_of!(StartHeader, table_len),
    h_efer = const HEADER_OFFSET + offset_of!(StartHeader, efer_or),
    h_strays = const HEADER_OFFSET + offset_of!(StartHeader, strays),
    h_stray_apic = const HEADER_OFFSET + offset_of!(StartHeader, stray_apic_id),
    e_apic = const offset_of!(CpuEntry, apic_id),
    e_armed = const offset_of!(CpuEntry, armed),
    e_cr3 = const offset_of!(CpuEntry, cr3),
    e_stage = const offset_of!(CpuEntry, stage),
    e_slot = const offset_of!(CpuEntry, slot),
    e_tsc = const offset_of!(CpuEntry, tsc),
    e_size = const size_of::<CpuEntry>(),
    s_gdtr = const offset_of!(Slot, gdtr),
    s_idtr = const offset_of!(Slot, idtr),
    // Type byte (byte 5) of the TSS descriptor, GDT slot 4 (SDM Vol. 3A, "TSS Descriptor").
    s_tss_type = const offset_of!(Slot, gdt) + 4 * 8 + 5,
    s_cs = const offset_of!(Slot, cs),
    s_ds = const offset_of!(Slot, ds),
    s_entry = const offset_of!(Slot, entry),
    s_stack = const offset_of!(Slot, stack_top),
    s_arg0 = const offset_of!(Slot, arg0),
    s_arg1 = const offset_of!(Slot, arg1),
    s_status = const offset_of!(Slot, status_block),
    s_stage = const offset_of!(Slot, checkin_stage),
    s_apic = const offset_of!(Slot, checkin_apic_id),
    s_tsc = const offset_of!(Slot, checkin_tsc),
    f_state = const offset_of!(StatusBlock, state),
    f_vector = const offset_of!(StatusBlock, fault_vector),
    f_error = const offset_of!(StatusBlock, fault_error_code),
    f_rip = const offset_of!(StatusBlock, fault_rip),
    f_rsp = const offset_of!(StatusBlock, fault_rsp),
    f_cr2 = const offset_of!(StatusBlock, fault_cr2),
    f_apic = const offset_of!(StatusBlock, fault_apic_id),
    state_faulted = const bootproto::state::FAULTED,
    options(att_syntax)
);

// The parking page: where a stopped CPU goes to prove that it took the INIT.
//
// After INIT, a CPU sits in wait-for-SIPI, but the INIT is delivered asynchronously: until the
// target processes it, it may still be running the instance's code. The manager therefore
// follows the INIT with a SIPI to this page, whose code (real mode) appends the CPU's APIC ID
// to the log at HEADER_OFFSET (a locked exchange-add hands out the slots, so many CPUs can park
// at once), then halts with interrupts off. A SIPI is only accepted in wait-for-SIPI, so seeing
// the ID proves the CPU has left the instance, and only then is its memory scrubbed. A later
// start sends INIT again, which brings the CPU back from the halt.
global_asm!(
    r#"
    .pushsection .rodata.mk_park, "a"
    .balign 16
    .global mk_park_begin
mk_park_begin:
    .code16
    cli
"#,
    read_apic_id_into_esi!(),
    r#"
    movw %cs, %ax
    movw %ax, %ds
    movl $1, %eax
    lock xaddl %eax, {log_count}
    cmpl ${capacity}, %eax
    jae 3f
    movl %esi, {log_ids}(,%eax,4)
3:
    hlt
    jmp 3b
    .global mk_park_end
mk_park_end:
    .code64
    .popsection
"#,
    log_count = const HEADER_OFFSET + offset_of!(ParkLog, count),
    log_ids = const HEADER_OFFSET + offset_of!(ParkLog, ids),
    capacity = const PARK_LOG_CAPACITY,
    options(att_syntax)
);
