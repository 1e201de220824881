//! Thin leaf modules over the hardware: CPU registers and instructions,
//! descriptor tables, ACPI tables, ports. No policy lives here.

pub mod acpi;
pub mod cpu;
pub mod gdt;
pub mod idt;
pub mod lapic;
pub mod pic;
pub mod port;
