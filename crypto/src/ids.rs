//! Party identities.

use core::fmt;

/// A party's number in the consortium roster. Shamir shares are evaluated at
/// `x = id + 1`, so every id, including 0, maps to a non-zero point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartyId(pub u32);

impl fmt::Display for PartyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u32> for PartyId {
    fn from(v: u32) -> Self {
        PartyId(v)
    }
}
