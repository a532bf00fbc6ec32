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
        // With t ≤ half a neighbourhood, a coordinator that splits the
        // holders into two camps could collect t self-mask shares from one
        // and t mask-key shares from the other; the signed survivor lists
        // only rule that out when the camps cannot both reach t.
        if config.active && 2 * config.threshold <= holders {
            return Err(Error::Config(format!(
                "active mode needs a threshold above half of each neighbourhood: more than {} of {holders}, got {}",
                holders / 2,
                config.threshold
            )));
        }
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
