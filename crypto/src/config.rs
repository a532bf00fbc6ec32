//! The parameters of one secure-sum round, agreed by every party and the
//! coordinator before it starts.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::Error;
use crate::graph::{GraphSpec, NeighbourGraph};
use crate::identity::IdentityPublicKey;
use crate::ids::PartyId;
use crate::session::{SessionId, SessionParams, Transcript};

/// Upper bounds applied before anything is allocated.
pub const MAX_PARTIES: usize = 1 << 16;
pub const MAX_LEN: usize = 1 << 28;
pub const MIN_BITS: u8 = 8;
pub const MAX_BITS: u8 = 32;

#[derive(Clone, Debug)]
pub struct RoundConfig {
    pub session: SessionParams,
    /// Every party allowed in the round, with its identity key.
    pub roster: BTreeMap<PartyId, IdentityPublicKey>,
    /// Shamir threshold within each neighbourhood (the party and its
    /// neighbours); with the complete graph, out of all parties.
    pub threshold: usize,
    /// How many parties may collude with the coordinator. Rounds whose
    /// threshold does not outweigh them are refused (see [`Round::new`]).
    pub max_colluding: usize,
    pub graph: GraphSpec,
    /// Public seed of the neighbour graph (fresh per round).
    pub graph_seed: [u8; 32],
    /// Words are taken mod `2^bits`.
    pub bits: u8,
    /// Words per vector.
    pub len: usize,
    /// Run the consistency check (signed survivor lists).
    pub active: bool,
    /// How long the coordinator waits in each phase before it treats silent
    /// parties as dropped.
    pub phase_timeout: Duration,
}

/// A validated configuration: its graph and session digest are computed once.
#[derive(Clone, Debug)]
pub struct Round {
    pub(crate) config: RoundConfig,
    pub(crate) graph: NeighbourGraph,
    pub(crate) session: SessionId,
}

impl Round {
    pub fn new(config: RoundConfig) -> Result<Self, Error> {
        let n = config.roster.len();
        if !(2..=MAX_PARTIES).contains(&n) {
            return Err(Error::Config(format!(
                "the roster must hold between 2 and {MAX_PARTIES} parties, it holds {n}"
            )));
        }
        if !(MIN_BITS..=MAX_BITS).contains(&config.bits) {
            return Err(Error::Config(format!(
                "bits must be between {MIN_BITS} and {MAX_BITS}, got {}",
                config.bits
            )));
        }
        if config.len == 0 || config.len > MAX_LEN {
            return Err(Error::Config(format!(
                "vector length must be between 1 and {MAX_LEN}, got {}",
                config.len
            )));
        }
        let parties: Vec<PartyId> = config.roster.keys().copied().collect();
        let graph = NeighbourGraph::new(&parties, config.graph, config.graph_seed)
            .map_err(Error::Config)?;
        let holders = graph.degree() + 1;
        if config.threshold < 2 || config.threshold > holders {
            return Err(Error::Config(format!(
                "threshold must be between 2 and {holders} (a party and its {} neighbours), got {}",
                graph.degree(),
                config.threshold
            )));
        }
        check_collusion(
            config.threshold,
            holders,
            config.max_colluding,
            config.active,
        )?;
        let session = session_id(&config);
        Ok(Round {
            config,
            graph,
            session,
        })
    }

    pub fn config(&self) -> &RoundConfig {
        &self.config
    }

    pub fn graph(&self) -> &NeighbourGraph {
        &self.graph
    }

    pub fn session(&self) -> &SessionId {
        &self.session
    }

    pub fn mask(&self) -> u32 {
        word_mask(self.config.bits)
    }
}

/// The bound a round's threshold must meet against `max_colluding`
/// colluders in every neighbourhood of `holders` (a party and its
/// neighbours), shared by [`Round::new`], policy validation and
/// [`crate::graph::recommend_sparse`].
///
/// - Always `t > c`: colluders alone never hold `t` shares of anything.
/// - Active mode (a coordinator that may lie about who dropped): `2t > h + c`.
///   An honest holder reveals at most one of a party's two secrets, a
///   colluder both; a coordinator that shows two camps of holders two
///   survivor lists therefore collects at most `h + c` shares of the two
///   kinds together, fewer than the `2t` it needs for both. The same count,
///   applied to the holders of each honest revealer, bounds every sum the
///   coordinator can unmask from below by `t − c` honest inputs
///   (docs/threat-model.md gives the argument).
pub fn check_collusion(
    threshold: usize,
    holders: usize,
    max_colluding: usize,
    active: bool,
) -> Result<(), Error> {
    if max_colluding >= threshold {
        return Err(Error::Config(format!(
            "max_colluding ({max_colluding}) must be below the threshold ({threshold}): \
             colluders alone would hold enough shares to reconstruct secrets"
        )));
    }
    if active && 2 * threshold <= holders + max_colluding {
        return Err(Error::Config(format!(
            "active mode needs 2·threshold > holders + max_colluding in every neighbourhood: \
             2·{threshold} ≤ {holders} + {max_colluding}; use a threshold of at least {}",
            (holders + max_colluding) / 2 + 1
        )));
    }
    Ok(())
}

pub fn word_mask(bits: u8) -> u32 {
    if bits >= 32 {
        u32::MAX
    } else {
        (1u32 << bits) - 1
    }
}

fn session_id(c: &RoundConfig) -> SessionId {
    let mut t = Transcript::new("shroud/v1/session");
    t.bytes(c.session.consortium.as_bytes())
        .bytes(c.session.job.as_bytes())
        .u64(c.session.round)
        .u64(u64::from(c.session.task))
        .u64(c.threshold as u64)
        .u64(c.max_colluding as u64)
        .u64(u64::from(c.bits))
        .u64(c.len as u64)
        .u64(u64::from(c.active))
        .bytes(&c.graph_seed);
    match c.graph {
        GraphSpec::Complete => t.u64(0),
        GraphSpec::Regular { degree } => t.u64(1).u64(u64::from(degree)),
    };
    t.u64(c.roster.len() as u64);
    for (id, key) in &c.roster {
        t.u64(u64::from(id.0)).bytes(&key.to_bytes());
    }
    SessionId(t.finish())
}
