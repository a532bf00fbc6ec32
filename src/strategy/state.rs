//! The bytes a strategy half keeps between rounds: a tag naming the
//! strategy and its format version, then length-prefixed little-endian
//! fields. Small and explicit, so a store can keep it and a reader can
//! refuse what it does not understand.

use std::fmt;

/// Saved state that cannot be read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateError(pub String);

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "saved strategy state: {}", self.0)
    }
}

impl std::error::Error for StateError {}

pub struct StateWriter {
    buf: Vec<u8>,
}

impl StateWriter {
    /// Starts a state tagged `tag` (e.g. `b"fedavg/1"`).
    pub fn new(tag: &[u8]) -> StateWriter {
        let mut w = StateWriter { buf: Vec::new() };
        w.bytes(tag);
        w
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(&(v.len() as u64).to_le_bytes());
        self.buf.extend_from_slice(v);
        self
    }

    pub fn f64s(&mut self, v: &[f64]) -> &mut Self {
        self.buf.extend_from_slice(&(v.len() as u64).to_le_bytes());
        v.iter()
            .for_each(|x| self.buf.extend_from_slice(&x.to_le_bytes()));
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

pub struct StateReader<'a> {
    rest: &'a [u8],
}

impl<'a> StateReader<'a> {
    /// Reads a state that must carry `tag`.
    pub fn new(bytes: &'a [u8], tag: &[u8]) -> Result<StateReader<'a>, StateError> {
        let mut r = StateReader { rest: bytes };
        let found = r.bytes()?;
        if found != tag {
            return Err(StateError(format!(
                "written as `{}`, read as `{}`",
                String::from_utf8_lossy(found).escape_debug(),
                String::from_utf8_lossy(tag)
            )));
        }
        Ok(r)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        if self.rest.len() < n {
            return Err(StateError("truncated".into()));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub fn u32(&mut self) -> Result<u32, StateError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn len(&mut self, width: usize) -> Result<usize, StateError> {
        let n = u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"));
        let n = usize::try_from(n).map_err(|_| StateError("length out of range".into()))?;
        if n.checked_mul(width).map_or(true, |b| b > self.rest.len()) {
            return Err(StateError("truncated".into()));
        }
        Ok(n)
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], StateError> {
        let n = self.len(1)?;
        self.take(n)
    }

    pub fn f64s(&mut self) -> Result<Vec<f64>, StateError> {
        let n = self.len(8)?;
        Ok(self
            .take(8 * n)?
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect())
    }

    /// A vector that must have `n` values.
    pub fn f64s_of(&mut self, n: usize, what: &str) -> Result<Vec<f64>, StateError> {
        let v = self.f64s()?;
        if v.len() != n {
            return Err(StateError(format!(
                "{what} has {} values, the model {n}",
                v.len()
            )));
        }
        Ok(v)
    }

    /// Every byte was read.
    pub fn end(self) -> Result<(), StateError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(StateError(format!("{} bytes left over", self.rest.len())))
        }
    }
}
