//! The manager's own GDT, TSS and IDT, so that a CPU exception in the manager is reported
//! (vector, error code, RIP, CR2) through the panic path instead of ending as a silent triple
//! fault. Interrupts stay disabled except inside the halting wait (`machine.rs`), where the
//! local APIC timer's interrupt ([`crate::lapic::TIMER_VECTOR`]) wakes the CPU; its handler
//! only signals end of interrupt. The spurious vector (0xFF) has a handler that does nothing
//! (SDM Vol. 3A, "Spurious Interrupt": no EOI for it).
//!
//! The double-fault handler runs on its own stack (TSS IST entry 0), so a stack overflow in the
//! manager is still reported (SDM Vol. 3A, "Interrupt Stack Table").

use spin::Once;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::registers::control::Cr2;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame, PageFaultErrorCode};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

const DOUBLE_FAULT_IST: u16 = 0;
const DOUBLE_FAULT_STACK_BYTES: usize = 16 * 1024;

#[repr(C, align(16))]
struct Stack([u8; DOUBLE_FAULT_STACK_BYTES]);

static mut DOUBLE_FAULT_STACK: Stack = Stack([0; DOUBLE_FAULT_STACK_BYTES]);

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<(GlobalDescriptorTable, SegmentSelector, SegmentSelector, SegmentSelector)> =
    Once::new();
static IDT: Once<InterruptDescriptorTable> = Once::new();

/// Loads the GDT, TSS and IDT on the BSP. Call once, early.
pub fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        let top = core::ptr::addr_of!(DOUBLE_FAULT_STACK) as u64 + DOUBLE_FAULT_STACK_BYTES as u64;
        tss.interrupt_stack_table[DOUBLE_FAULT_IST as usize] = VirtAddr::new(top);
        tss
    });
    let (gdt, code, data, tss_sel) = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss_sel = gdt.append(Descriptor::tss_segment(tss));
        (gdt, code, data, tss_sel)
    });
    gdt.load();
    // SAFETY: `code` and `data` are valid selectors of the GDT just loaded, which lives for the
    // program's life; reloading the segment registers with them keeps a flat address space.
    unsafe { CS::set_reg(*code) };
    // SAFETY: as above.
    unsafe { DS::set_reg(*data) };
    // SAFETY: as above.
    unsafe { ES::set_reg(*data) };
    // SAFETY: as above.
    unsafe { SS::set_reg(*data) };
    // SAFETY: `tss_sel` names the TSS descriptor of the loaded GDT; the TSS is 'static.
    unsafe { load_tss(*tss_sel) };

    let idt = IDT.call_once(|| {
        let mut idt = InterruptDescriptorTable::new();
        idt.divide_error.set_handler_fn(divide_error);
        idt.invalid_opcode.set_handler_fn(invalid_opcode);
        idt.general_protection_fault.set_handler_fn(general_protection);
        idt.page_fault.set_handler_fn(page_fault);
        idt.stack_segment_fault.set_handler_fn(stack_segment);
        idt[crate::lapic::TIMER_VECTOR].set_handler_fn(timer);
        idt[0xFF].set_handler_fn(spurious);
        let df = idt.double_fault.set_handler_fn(double_fault);
        // SAFETY: IST index 0 is set up in the TSS above with its own stack, used by nothing else.
        unsafe { df.set_stack_index(DOUBLE_FAULT_IST) };
        idt
    });
    idt.load();
}

/// Masks every input of both legacy 8259 interrupt controllers (OCW1 = 0xFF to each data
/// port; Intel 8259A datasheet, "Operation Command Words"). The manager uses the local APIC
/// only, and a kernel started on an AP (Linux among them) must never see a stray 8259
/// interrupt through LINT0.
pub fn mask_legacy_pics() {
    let mut master: x86_64::instructions::port::Port<u8> =
        x86_64::instructions::port::Port::new(0x21);
    let mut slave: x86_64::instructions::port::Port<u8> =
        x86_64::instructions::port::Port::new(0xA1);
    // SAFETY: 0x21 and 0xA1 are the 8259s' data ports; writing 0xFF there only masks
    // interrupts, which the manager does not use.
    unsafe { master.write(0xFF) };
    // SAFETY: as above.
    unsafe { slave.write(0xFF) };
}

extern "x86-interrupt" fn timer(_frame: InterruptStackFrame) {
    crate::lapic::eoi();
}

extern "x86-interrupt" fn spurious(_frame: InterruptStackFrame) {}

extern "x86-interrupt" fn divide_error(frame: InterruptStackFrame) {
    panic!(
        "manager CPU exception: divide error (#DE) at RIP {:#x}",
        frame.instruction_pointer.as_u64()
    );
}

extern "x86-interrupt" fn invalid_opcode(frame: InterruptStackFrame) {
    panic!(
        "manager CPU exception: invalid opcode (#UD) at RIP {:#x}",
        frame.instruction_pointer.as_u64()
    );
}

extern "x86-interrupt" fn general_protection(frame: InterruptStackFrame, code: u64) {
    panic!(
        "manager CPU exception: general protection (#GP), error code {code:#x}, at RIP {:#x}",
        frame.instruction_pointer.as_u64()
    );
}

extern "x86-interrupt" fn stack_segment(frame: InterruptStackFrame, code: u64) {
    panic!(
        "manager CPU exception: stack fault (#SS), error code {code:#x}, at RIP {:#x}",
        frame.instruction_pointer.as_u64()
    );
}

extern "x86-interrupt" fn page_fault(frame: InterruptStackFrame, code: PageFaultErrorCode) {
    let cr2 = Cr2::read_raw();
    panic!(
        "manager CPU exception: page fault (#PF) at address {cr2:#x} ({code:?}), RIP {:#x}",
        frame.instruction_pointer.as_u64()
    );
}

extern "x86-interrupt" fn double_fault(frame: InterruptStackFrame, _code: u64) -> ! {
    panic!(
        "manager CPU exception: double fault (#DF) at RIP {:#x}, RSP {:#x} (a stack overflow?)",
        frame.instruction_pointer.as_u64(),
        frame.stack_pointer.as_u64()
    );
}
