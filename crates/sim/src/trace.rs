//! Request traces in the Mooncake format: one JSON object a line with `timestamp` (ms),
//! `input_length`, `output_length` and `hash_ids` (one id per block of `block_tokens` tokens;
//! equal ids are equal prefix blocks).

use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;

use kvtier_core::error::{Error, Result};

/// One request of a trace.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Request {
    /// Arrival time in milliseconds since the start of the trace.
    pub timestamp: u64,
    /// Prompt tokens.
    pub input_length: u64,
    /// Generated tokens.
    pub output_length: u64,
    /// One id per prompt block; the last may cover a partial block.
    pub hash_ids: Vec<u64>,
}

/// Reads a trace, checking every line: a bad line is an error naming the file, the line number
/// and what is wrong. Blank lines are skipped.
pub fn load(path: &Path, block_tokens: u64) -> Result<Vec<Request>> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::io("opening the trace", e).with_context("path", path.display()))?;
    parse(std::io::BufReader::new(file), block_tokens)
        .map_err(|e| e.with_context("path", path.display()))
}

/// Parses a trace from a reader (see [`load`]).
pub fn parse(reader: impl BufRead, block_tokens: u64) -> Result<Vec<Request>> {
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| Error::io(format!("reading trace line {n}"), e))?;
        if line.trim().is_empty() {
            continue;
        }
        let r: Request = serde_json::from_str(&line)
            .map_err(|e| Error::invalid(format!("trace line {n}: {e}")).with_context("line", n))?;
        let need = r.input_length.div_ceil(block_tokens);
        if r.hash_ids.len() as u64 != need {
            return Err(Error::invalid(format!(
                "trace line {n}: {} hash_ids for input_length {} (expected {need} blocks of {block_tokens} tokens; is --block-tokens right?)",
                r.hash_ids.len(),
                r.input_length
            ))
            .with_context("line", n));
        }
        out.push(r);
    }
    if out.is_empty() {
        return Err(Error::invalid("the trace has no requests"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_bad_lines() {
        let good = "{\"timestamp\": 0, \"input_length\": 600, \"output_length\": 5, \"hash_ids\": [1, 2]}\n\n";
        let t = parse(good.as_bytes(), 512).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].hash_ids, vec![1, 2]);

        let missing =
            format!("{good}{{\"timestamp\": 1, \"input_length\": 10, \"output_length\": 5}}\n");
        let e = parse(missing.as_bytes(), 512).unwrap_err();
        assert!(
            e.to_string().contains("trace line 3") && e.to_string().contains("hash_ids"),
            "{e}"
        );

        let garbage = format!("{good}not json\n");
        let e = parse(garbage.as_bytes(), 512).unwrap_err();
        assert!(e.to_string().contains("trace line 3"), "{e}");

        let wrong =
            "{\"timestamp\": 0, \"input_length\": 2000, \"output_length\": 5, \"hash_ids\": [1]}\n";
        let e = parse(wrong.as_bytes(), 512).unwrap_err();
        assert!(
            e.to_string().contains("trace line 1") && e.to_string().contains("hash_ids"),
            "{e}"
        );

        let negative =
            "{\"timestamp\": 0, \"input_length\": -4, \"output_length\": 5, \"hash_ids\": []}\n";
        assert!(parse(negative.as_bytes(), 512)
            .unwrap_err()
            .to_string()
            .contains("trace line 1"));
        assert!(parse("".as_bytes(), 512).is_err());
    }
}
