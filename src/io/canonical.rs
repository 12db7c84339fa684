//! Byte-for-byte reproducible safetensors files.
//!
//! The `safetensors` crate takes the metadata as a `HashMap`, so the order of
//! its keys in the header changes from run to run, and two seeded runs would
//! write different bytes for the same tensors. [`serialize`] rewrites the
//! header with its keys sorted (serde_json's maps are ordered), which leaves
//! the tensor data and its offsets (relative to the end of the header) as
//! they were.

use std::collections::HashMap;

use safetensors::tensor::View;

/// `safetensors::serialize`, with the header's keys in sorted order.
pub fn serialize<S, V, I>(data: I, metadata: HashMap<String, String>) -> Result<Vec<u8>, String>
where
    S: AsRef<str> + Ord + std::fmt::Display,
    V: View,
    I: IntoIterator<Item = (S, V)>,
{
    let bytes = safetensors::serialize(data, Some(metadata)).map_err(|e| e.to_string())?;
    let header_len = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or("safetensors wrote no header")? as usize;
    let header = bytes
        .get(8..8 + header_len)
        .ok_or("safetensors wrote a short header")?;
    let value: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| format!("safetensors header: {e}"))?;
    let mut sorted = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
    // The format pads the header with spaces to a multiple of 8 bytes, so
    // that the data that follows stays aligned.
    while sorted.len() % 8 != 0 {
        sorted.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + sorted.len() + bytes.len() - 8 - header_len);
    out.extend_from_slice(&(sorted.len() as u64).to_le_bytes());
    out.extend_from_slice(&sorted);
    out.extend_from_slice(&bytes[8 + header_len..]);
    Ok(out)
}
