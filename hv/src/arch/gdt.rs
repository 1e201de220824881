//! The kernel's GDT and TSS, with IST stacks for #DF, NMI and #MC.
//!
//! A valid TR is also needed before any stack switch: without one QEMU aborts
//! with "invalid tss" (docs/qemu-tcg.md).

use spin::Once;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, FS, GS, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::registers::segmentation::SegmentSelector;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// IST slot (1-based in the IDT, 0-based in the TSS) of each emergency stack.
pub const IST_DOUBLE_FAULT: u16 = 1;
/// NMI stack.
pub const IST_NMI: u16 = 2;
/// Machine-check stack.
pub const IST_MACHINE_CHECK: u16 = 3;

const IST_STACK_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
struct IstStacks([[u8; IST_STACK_SIZE]; 3]);

static mut IST_STACKS: IstStacks = IstStacks([[0; IST_STACK_SIZE]; 3]);

struct Tables {
    gdt: GlobalDescriptorTable,
    code: SegmentSelector,
    data: SegmentSelector,
    tss: SegmentSelector,
}

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<Tables> = Once::new();

/// Kernel code selector (valid after [`init`]).
pub fn kernel_code_selector() -> SegmentSelector {
    GDT.get().map(|t| t.code).unwrap_or(SegmentSelector(0x08))
}

/// Loads the GDT and TSS on the boot processor and reloads every segment.
pub fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        for (slot, ist) in [IST_DOUBLE_FAULT, IST_NMI, IST_MACHINE_CHECK]
            .into_iter()
            .enumerate()
        {
            // SAFETY: only the address of the static stack is taken.
            let base = unsafe { core::ptr::addr_of!(IST_STACKS.0[slot]) } as u64;
            tss.interrupt_stack_table[usize::from(ist - 1)] =
                VirtAddr::new(base + IST_STACK_SIZE as u64);
        }
        tss
    });
    load(GDT.call_once(|| tables(tss)));
}

/// The GDT for `tss`: code 0x08, data 0x10, TSS 0x18 on every CPU (the
/// shared IDT's gates name selector 0x08).
fn tables(tss: &'static TaskStateSegment) -> Tables {
    let mut gdt = GlobalDescriptorTable::new();
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let tss = gdt.append(Descriptor::tss_segment(tss));
    Tables {
        gdt,
        code,
        data,
        tss,
    }
}

fn load(t: &'static Tables) {
    t.gdt.load();
    // SAFETY: the selectors index descriptors of the GDT just loaded.
    unsafe {
        CS::set_reg(t.code);
        for load in [SS::set_reg, DS::set_reg, ES::set_reg] {
            load(t.data);
        }
        FS::set_reg(SegmentSelector(0));
        GS::set_reg(SegmentSelector(0));
        load_tss(t.tss);
    }
}

/// Gives an application processor a GDT and TSS of its own, with IST
/// stacks of its own (a TSS is busy once loaded: CPUs cannot share one),
/// and loads them. The tables live for good on the heap.
pub fn init_ap() -> Result<(), &'static str> {
    let mut tss = TaskStateSegment::new();
    for ist in [IST_DOUBLE_FAULT, IST_NMI, IST_MACHINE_CHECK] {
        let frames = (IST_STACK_SIZE as u64) / crate::mem::frame::FRAME_SIZE;
        let phys = crate::mem::frame::alloc(frames, crate::mem::frame::FRAME_SIZE)
            .ok_or("out of memory for IST stacks")?;
        let top = crate::mem::paging::phys_to_virt(phys) + IST_STACK_SIZE as u64;
        tss.interrupt_stack_table[usize::from(ist - 1)] = VirtAddr::new(top);
    }
    let tss: &'static TaskStateSegment = alloc::boxed::Box::leak(alloc::boxed::Box::new(tss));
    load(alloc::boxed::Box::leak(alloc::boxed::Box::new(tables(tss))));
    Ok(())
}
