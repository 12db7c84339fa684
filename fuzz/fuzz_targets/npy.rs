//! The `.npy` reader on arbitrary bytes: an array or an error, never a panic
//! or an allocation the header merely claims.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = onebit::io::npy::read(data) {
        assert_eq!(a.data.len(), a.shape.iter().product::<usize>());
        // What the reader accepts, the writer writes back the same.
        let again = onebit::io::npy::read(&onebit::io::npy::write(&a.shape, &a.data))
            .expect("a written array reads back");
        assert_eq!(again.shape, a.shape);
    }
});
