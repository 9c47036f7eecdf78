//! A minimal firmware: the runtime and the model, one inference in a static
//! arena, the predicted class printed. Built to measure flash and RAM.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use shiftnn_firmware::fixtures::{ARENA_BYTES, CLASSES, IMAGE_LEN, MODEL};
use shiftnn_firmware::{println, Arena};
use shiftnn_runtime::{Model, Session};

static mut ARENA: Arena = Arena([0; ARENA_BYTES]);

#[entry]
fn main() -> ! {
    shiftnn_firmware::init();
    // SAFETY: main runs once and never returns; the only reference to ARENA.
    let arena = unsafe { &mut (*core::ptr::addr_of_mut!(ARENA)).0 };
    let code = match Model::from_bytes(MODEL).and_then(|m| {
        let mut s = Session::with_arena(&m, arena)?;
        let x = [0.5f32; IMAGE_LEN];
        let mut y = [0f32; CLASSES];
        s.run(&[&x], &mut [&mut y])?;
        Ok((0..CLASSES).fold(0, |b, k| if y[k] > y[b] { k } else { b }))
    }) {
        Ok(class) => {
            println!("class {}", class);
            0
        }
        Err(_) => 1,
    };
    shiftnn_firmware::exit(code)
}
