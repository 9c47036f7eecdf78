//! Support for the shiftnn test firmware on emulated Cortex-M boards
//! (qemu-system-arm `mps2-an386`, Cortex-M4, and `mps3-an547`, Cortex-M55):
//! a small heap for loading the model (counted, so a test can prove that
//! inference allocates nothing), semihosting output and exit codes, an
//! instruction counter and a stack high-water mark.
#![no_std]

use core::alloc::{GlobalAlloc, Layout};
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::exception;
use embedded_alloc::LlffHeap;

pub use cortex_m_semihosting::hprintln as println;

/// Heap for load-time allocations (graph metadata, tensor table, derived
/// requantizers). Inference allocates nothing.
pub const HEAP_BYTES: usize = 48 * 1024;

/// The global allocator: embedded-alloc's heap, with counters.
pub struct CountingHeap {
    heap: LlffHeap,
    allocs: AtomicUsize,
    used: AtomicUsize,
    peak: AtomicUsize,
}

// SAFETY: every method forwards to LlffHeap (a correct GlobalAlloc, guarded
// by a critical section) and only adds relaxed counter updates.
unsafe impl GlobalAlloc for CountingHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.allocs.fetch_add(1, Ordering::Relaxed);
        let used = self.used.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        self.peak.fetch_max(used, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's guarantees (non-zero size).
        unsafe { self.heap.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.used.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's guarantees (ptr came from
        // alloc with this layout).
        unsafe { self.heap.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static HEAP: CountingHeap = CountingHeap {
    heap: LlffHeap::empty(),
    allocs: AtomicUsize::new(0),
    used: AtomicUsize::new(0),
    peak: AtomicUsize::new(0),
};

/// Allocations so far.
pub fn heap_allocs() -> usize {
    HEAP.allocs.load(Ordering::Relaxed)
}

/// Highest number of heap bytes in use at once.
pub fn heap_peak() -> usize {
    HEAP.peak.load(Ordering::Relaxed)
}

/// Heap bytes in use now.
pub fn heap_used() -> usize {
    HEAP.used.load(Ordering::Relaxed)
}

/// Set up the heap, the stack watermark and the instruction counter. Call
/// once, first thing in `main`.
pub fn init() {
    static mut HEAP_MEM: [MaybeUninit<u8>; HEAP_BYTES] = [MaybeUninit::uninit(); HEAP_BYTES];
    // SAFETY: init runs once, before any allocation; HEAP_MEM is used by
    // nothing else, so handing it to the allocator is exclusive.
    unsafe {
        HEAP.heap
            .init(core::ptr::addr_of_mut!(HEAP_MEM) as usize, HEAP_BYTES)
    }
    paint_stack();
    start_counter();
}

/// Leave qemu with `code` (semihosting SYS_EXIT_EXTENDED).
pub fn exit(code: u32) -> ! {
    // ADP_Stopped_ApplicationExit with a status code.
    let args = [0x20026usize, code as usize];
    loop {
        // SAFETY: SYS_EXIT_EXTENDED (0x20) takes a pointer to two words,
        // which `args` provides; qemu exits and does not return.
        unsafe { cortex_m_semihosting::syscall(0x20, &args) };
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("PANIC: {}", info);
    exit(101)
}

// ---------------------------------------------------------------------
// Instruction counting: SysTick from the core clock, 24-bit, wraps counted.
// Under `qemu-system-arm -icount shift=0` the virtual clock advances one
// nanosecond per instruction, so ticks are proportional to instructions;
// `calibrate` measures the ratio with a loop of known length.

static WRAPS: AtomicU32 = AtomicU32::new(0);
const RELOAD: u32 = 0x00FF_FFFF;

#[exception]
fn SysTick() {
    WRAPS.fetch_add(1, Ordering::Relaxed);
}

fn start_counter() {
    let Some(mut p) = cortex_m::Peripherals::take() else {
        return;
    };
    p.SYST.set_clock_source(SystClkSource::Core);
    p.SYST.set_reload(RELOAD);
    p.SYST.clear_current();
    p.SYST.enable_interrupt();
    p.SYST.enable_counter();
    // The counter reads 0 until its first reload.
    for _ in 0..1000 {
        if cortex_m::peripheral::SYST::get_current() != 0 {
            break;
        }
    }
}

/// SysTick ticks since [`init`].
pub fn ticks() -> u64 {
    loop {
        let w = WRAPS.load(Ordering::Relaxed);
        let cvr = cortex_m::peripheral::SYST::get_current();
        if WRAPS.load(Ordering::Relaxed) == w {
            return w as u64 * (RELOAD as u64 + 1) + (RELOAD - cvr) as u64;
        }
    }
}

/// Executes exactly `2 * n` instructions (`subs`, `bne`) for calibration.
#[inline(never)]
pub fn known_loop(n: u32) {
    // SAFETY: a register-only countdown loop; touches no memory and leaves
    // the stack alone.
    unsafe {
        core::arch::asm!(
            "2:",
            "subs {0}, {0}, #1",
            "bne 2b",
            inout(reg) n.max(1) => _,
            options(nomem, nostack),
        )
    }
}

/// Instructions per SysTick tick, measured with [`known_loop`] (fixed
/// point, x1000). Only meaningful under `-icount`.
pub fn calibrate() -> u64 {
    const N: u32 = 2_000_000;
    let t0 = ticks();
    known_loop(N);
    let dt = ticks().saturating_sub(t0);
    (2 * N as u64 * 1000) / dt.max(1)
}

// ---------------------------------------------------------------------
// Stack high-water mark: the free RAM between the end of static data and
// the stack pointer is filled with a pattern at start; the lowest address
// no longer holding it bounds the deepest stack use.

const PAINT: u32 = 0xC0DE_CAFE;

extern "C" {
    static __sheap: u32;
    static _stack_start: u32;
}

fn stack_bounds() -> (usize, usize) {
    // Linker symbols from cortex-m-rt's link.x: only their addresses are
    // taken, never their values.
    (
        core::ptr::addr_of!(__sheap) as usize,
        core::ptr::addr_of!(_stack_start) as usize,
    )
}

fn paint_stack() {
    let (lo, _) = stack_bounds();
    let sp = cortex_m::register::msp::read() as usize;
    let mut p = (lo + 3) & !3;
    // Leave 256 bytes under the current frame alone.
    while p + 4 <= sp - 256 {
        // SAFETY: [__sheap, sp - 256) is RAM that no static occupies (it
        // lies past .bss/.uninit) and that the stack has not reached yet;
        // word-aligned writes there disturb nothing.
        unsafe { core::ptr::write_volatile(p as *mut u32, PAINT) };
        p += 4;
    }
}

/// Deepest stack use so far in bytes (from the top of RAM).
pub fn stack_high_water() -> usize {
    let (lo, top) = stack_bounds();
    let mut p = (lo + 3) & !3;
    // SAFETY: reads words of RAM inside [__sheap, _stack_start), all
    // mapped and initialized (painted or written by the stack).
    while p < top && unsafe { core::ptr::read_volatile(p as *const u32) } == PAINT {
        p += 4;
    }
    top - p
}

/// The Rust target this firmware was built for.
pub const TARGET: &str = env!("FW_TARGET");

/// The committed fixtures (`tests/fixtures/firmware/`), produced on the host.
pub mod fixtures {
    include!("../../tests/fixtures/firmware/model_consts.rs");

    /// The Fashion-MNIST model, 4 bits, int8, used in place from flash.
    pub static MODEL: &[u8] = shiftnn_runtime::include_model!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/firmware/fmnist_b4_int8.shift"
    ));

    /// `N_IMAGES` test images, f32 little-endian, `IMAGE_LEN` each.
    pub fn images() -> &'static [f32] {
        static B: &[u8] = shiftnn_runtime::include_model!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/firmware/images.f32"
        ));
        bytemuck::cast_slice(B)
    }

    /// The host's logits for the images, f32 little-endian, `CLASSES` each.
    pub fn logits() -> &'static [f32] {
        static B: &[u8] = shiftnn_runtime::include_model!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/firmware/logits.f32"
        ));
        bytemuck::cast_slice(B)
    }

    /// Labels of the images.
    pub static LABELS: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/firmware/labels.u8"
    ));
}

/// A caller's arena for the model: exactly `ARENA_BYTES`, 64-byte aligned.
#[repr(C, align(64))]
pub struct Arena(pub [u8; fixtures::ARENA_BYTES]);
