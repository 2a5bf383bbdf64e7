//! YAML loading whose cost is bounded before it is paid.
//!
//! saphyr resolves an alias by cloning the anchor's subtree, and its own alias budget counts
//! nodes, not bytes: one 1 MiB anchored string used 3,000 times is only 3,000 nodes but 3 GB of
//! clones (issue 11 aborted the controller that way). So the parser's events go through
//! [`Budget`] first, and only then to saphyr's loader: every node is charged what it will cost
//! once loaded (its text, its field path — positions are recorded by path — and a fixed
//! overhead), an alias is charged the whole of its anchor's cost at its new place, and the
//! first event that would go over [`MAX_EXPANDED_BYTES`] or nest deeper than [`MAX_DEPTH`]
//! stops the load there, with its position. Nothing over the budget is ever cloned.
//!
//! The events are pulled from the parser's iterator, which is a state machine: unlike
//! `Parser::load`, it does not recurse per nesting level, so deep nesting cannot overflow the
//! stack before the depth check sees it.

use std::collections::HashMap;

use saphyr::{MarkedYamlOwned, YamlLoader};
use saphyr_parser::{Event, Marker, Parser, ScanError, Span, SpannedEventReceiver};

/// The most a policy set may cost once every alias is expanded, summed over its files: what
/// the loader keeps in memory, approximately (see the module docs). Real policy sets cost a
/// few hundred KiB; a 4 MiB file of small rules about 25 MiB.
pub const MAX_EXPANDED_BYTES: u64 = 32 * 1024 * 1024;
/// The deepest nesting of sequences and mappings accepted. Policy documents need about ten
/// levels; the limit keeps every recursive walk after loading (conversion, serde) shallow.
pub const MAX_DEPTH: usize = 64;
/// What each node costs besides its text and path: the loaded node, its JSON value and its
/// entry in the position index.
const NODE_OVERHEAD: u64 = 32;
/// A sequence item's path segment (`[123]`), at most.
const INDEX_SEGMENT: u64 = 8;

/// What is left of the expansion budget; shared by the files of one policy set.
#[derive(Clone, Debug)]
pub struct Budget {
    remaining: u64,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            remaining: MAX_EXPANDED_BYTES,
        }
    }
}

impl Budget {
    /// What is left.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }
}

/// Why loading stopped.
#[derive(Debug)]
pub enum LoadFailure {
    /// The text is not YAML.
    Syntax(ScanError),
    /// A node would go over the expansion budget.
    TooLarge {
        /// Where.
        at: Marker,
        /// Whether the node is an alias (the usual way to get there).
        alias: bool,
    },
    /// A collection would nest deeper than [`MAX_DEPTH`].
    TooDeep {
        /// Where.
        at: Marker,
    },
}

/// One open sequence or mapping.
struct Frame {
    anchor: usize,
    /// The length of its own field path.
    path: u64,
    /// The budget's total when it opened, and the node count: what it contains is the
    /// difference when it closes.
    spent_before: u64,
    nodes_before: u64,
    kind: FrameKind,
}

enum FrameKind {
    Sequence,
    /// In a mapping, nodes alternate key, value; `key` is the pending key's length.
    Mapping {
        expect_key: bool,
        key: u64,
    },
}

/// What an anchored node costs wherever it is used: `relative` plus `nodes` times the length
/// of the path it is used at; `text` is its length as a mapping key.
#[derive(Clone, Copy)]
struct Anchored {
    relative: u64,
    nodes: u64,
    text: u64,
}

/// The event filter: charges every node before saphyr's loader sees it.
struct Meter<'b> {
    budget: &'b mut Budget,
    spent: u64,
    nodes: u64,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Anchored>,
}

impl Meter<'_> {
    /// The path length of the next node, and whether it is a mapping key.
    fn slot(&self) -> (u64, bool) {
        match self.stack.last() {
            None => (0, false),
            Some(f) => match f.kind {
                FrameKind::Sequence => (f.path + INDEX_SEGMENT, false),
                FrameKind::Mapping {
                    expect_key: true, ..
                } => (f.path, true),
                FrameKind::Mapping { key, .. } => (f.path + 1 + key, false),
            },
        }
    }

    /// A node of `text` bytes (the length a key would have) was completed in the current
    /// collection.
    fn completed(&mut self, text: u64) {
        if let Some(Frame {
            kind: FrameKind::Mapping { expect_key, key },
            ..
        }) = self.stack.last_mut()
        {
            if *expect_key {
                *key = text;
            }
            *expect_key = !*expect_key;
        }
    }

    fn charge(
        &mut self,
        cost: u64,
        nodes: u64,
        at: Marker,
        alias: bool,
    ) -> Result<(), LoadFailure> {
        if cost > self.budget.remaining {
            return Err(LoadFailure::TooLarge { at, alias });
        }
        self.budget.remaining -= cost;
        self.spent += cost;
        self.nodes += nodes;
        Ok(())
    }

    fn on(&mut self, event: &Event<'_>, span: Span) -> Result<(), LoadFailure> {
        let at = span.start;
        match event {
            Event::Scalar(text, _, anchor, _) => {
                let (path, key) = self.slot();
                let text = text.len() as u64;
                let own = NODE_OVERHEAD + text;
                self.charge(own + if key { 0 } else { path }, 1, at, false)?;
                if *anchor > 0 {
                    self.anchors.insert(
                        *anchor,
                        Anchored {
                            relative: own,
                            nodes: 1,
                            text,
                        },
                    );
                }
                self.completed(text);
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if self.stack.len() >= MAX_DEPTH {
                    return Err(LoadFailure::TooDeep { at });
                }
                let (path, _) = self.slot();
                let (spent_before, nodes_before) = (self.spent, self.nodes);
                self.charge(NODE_OVERHEAD + path, 1, at, false)?;
                self.stack.push(Frame {
                    anchor: *anchor,
                    path,
                    spent_before,
                    nodes_before,
                    kind: match event {
                        Event::SequenceStart(..) => FrameKind::Sequence,
                        _ => FrameKind::Mapping {
                            expect_key: true,
                            key: 0,
                        },
                    },
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(frame) = self.stack.pop() {
                    let cost = self.spent - frame.spent_before;
                    let nodes = self.nodes - frame.nodes_before;
                    if frame.anchor > 0 {
                        self.anchors.insert(
                            frame.anchor,
                            Anchored {
                                relative: cost.saturating_sub(nodes * frame.path),
                                nodes,
                                text: cost,
                            },
                        );
                    }
                    self.completed(cost);
                }
            }
            Event::Alias(id) => {
                let (path, key) = self.slot();
                let anchored = self.anchors.get(id).copied().unwrap_or(Anchored {
                    relative: 0,
                    nodes: 0,
                    text: 0,
                });
                let at_path = if key { 0 } else { path };
                let cost = anchored
                    .relative
                    .saturating_add(anchored.nodes.saturating_mul(at_path));
                self.charge(cost, anchored.nodes, at, true)?;
                self.completed(anchored.text);
            }
            Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart(_)
            | Event::DocumentEnd
            | Event::Nothing => {}
        }
        Ok(())
    }
}

/// Loads every document of `text`, charging `budget`; stops at the first node over it.
pub fn load(text: &str, budget: &mut Budget) -> Result<Vec<MarkedYamlOwned>, LoadFailure> {
    let mut meter = Meter {
        budget,
        spent: 0,
        nodes: 0,
        stack: Vec::new(),
        anchors: HashMap::new(),
    };
    let mut loader: YamlLoader<'_, MarkedYamlOwned> = YamlLoader::default();
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(LoadFailure::Syntax)?;
        meter.on(&event, span)?;
        loader.on_event(event, span);
        if let Some(e) = loader.error() {
            return Err(LoadFailure::Syntax(e.clone()));
        }
    }
    Ok(loader.into_documents())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(text: &str) -> u64 {
        let mut budget = Budget::default();
        load(text, &mut budget).expect("loads");
        MAX_EXPANDED_BYTES - budget.remaining()
    }

    #[test]
    fn an_alias_costs_what_its_anchor_costs() {
        let once = cost("a: &x [aaaa, bbbb]\n");
        let twice = cost("a: &x [aaaa, bbbb]\nb: *x\n");
        // The alias repeats the sequence and its two items (at `b`, whose path is as long
        // as `a`'s) and adds the key `b`, which costs what `a` did: everything but the root.
        assert_eq!(twice - once, once - NODE_OVERHEAD);
    }

    #[test]
    fn a_large_anchor_used_many_times_is_refused_at_the_alias_that_goes_over() {
        let big = "x".repeat(1 << 20);
        let mut text = format!("a: &big {big}\nb:\n");
        for _ in 0..3000 {
            text.push_str("  - *big\n");
        }
        let mut budget = Budget::default();
        match load(&text, &mut budget) {
            Err(LoadFailure::TooLarge { at, alias: true }) => {
                // 32 MiB of budget: the first 1 MiB is the anchor, the 32nd use goes over.
                assert_eq!(at.line(), 2 + 31, "{at:?}");
                assert_eq!(at.col(), 4);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn long_keys_are_charged_for_every_path_below_them() {
        // No alias at all: a 1 MiB key (explicit: implicit keys stop at 1024 characters)
        // above 100 items makes 100 paths of 1 MiB each.
        let key = "k".repeat(1 << 20);
        let items = "[1, 1, 1, 1, 1, 1, 1, 1, 1, 1]";
        let text = format!("? {key}\n: [{}]\n", [items; 10].join(", "));
        assert!(matches!(
            load(&text, &mut Budget::default()),
            Err(LoadFailure::TooLarge { alias: false, .. })
        ));
    }

    #[test]
    fn deep_nesting_is_refused_before_anything_recurses() {
        let text = format!("{}x\n", "- ".repeat(100_000));
        match load(&text, &mut Budget::default()) {
            Err(LoadFailure::TooDeep { at }) => assert_eq!(at.col(), 2 * MAX_DEPTH),
            other => panic!("expected TooDeep, got {other:?}"),
        }
        assert!(
            load(
                &format!("{}x\n", "- ".repeat(MAX_DEPTH)),
                &mut Budget::default()
            )
            .is_ok()
        );
    }

    #[test]
    fn the_budget_is_shared() {
        let mut budget = Budget {
            remaining: cost("a: [1, 2, 3]\n") + 1,
        };
        assert!(load("a: [1, 2, 3]\n", &mut budget).is_ok());
        assert!(load("a: [1, 2, 3]\n", &mut budget).is_err());
    }
}
