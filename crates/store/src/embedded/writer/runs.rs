//! Cutting a commit's records into runs.

use super::*;

/// A message's place in its scope's order: `(msg_ctime, msgid)`.
pub(super) type Position = (Millis, u64);

/// Where an encoded record lies in a commit's arena: start and end offsets (a group's arena
/// can pass 4 GiB: up to `queue_depth` requests of up to `max_body_bytes`).
pub(super) type ArenaRange = (usize, usize);

/// A commit's sorted records cut into runs: at [`keys::RUN_MAX`] records, before a record
/// lying [`keys::RUN_SPAN`] or more after its run's first, and before a record that would take
/// the run's bytes past [`RUN_BYTES`] (a scoped page reads a whole run for one record).
pub(super) fn cut_runs(
    recs: &[(Position, ArenaRange)],
) -> impl Iterator<Item = &[(Position, ArenaRange)]> {
    let mut rest = recs;
    std::iter::from_fn(move || {
        let first = rest.first()?.0.0;
        let mut bytes = 0;
        let n = rest
            .iter()
            .take(keys::RUN_MAX)
            .take_while(|((ctime, _), (s, e))| {
                bytes += e - s;
                *ctime - first < keys::RUN_SPAN && bytes <= RUN_BYTES
            })
            .count()
            .max(1);
        let (run, after) = rest.split_at(n);
        rest = after;
        Some(run)
    })
}

/// Most record bytes in a run, unless its first record alone is larger.
const RUN_BYTES: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Runs cover the records in order, each within every limit, and each cut only where
        /// the next record would break one.
        #[test]
        fn runs_are_cut_only_at_a_limit(
            steps in proptest::collection::vec((0i64..4_000, 0usize..20_000), 1..200),
        ) {
            let (mut t, mut at) = (1_000_000i64, 0usize);
            let recs: Vec<(Position, ArenaRange)> = steps
                .iter()
                .enumerate()
                .map(|(i, (dt, len))| {
                    t += dt;
                    at += len;
                    ((t, i as u64), (at - len, at))
                })
                .collect();
            let runs: Vec<&[(Position, ArenaRange)]> = cut_runs(&recs).collect();
            proptest::prop_assert_eq!(runs.concat(), recs.clone());
            let bytes = |run: &[(Position, ArenaRange)]| run.iter().map(|r| r.1.1 - r.1.0).sum::<usize>();
            for (i, run) in runs.iter().enumerate() {
                let first = run[0].0.0;
                proptest::prop_assert!(!run.is_empty() && run.len() <= keys::RUN_MAX);
                proptest::prop_assert!(run.iter().all(|r| r.0.0 - first < keys::RUN_SPAN));
                proptest::prop_assert!(run.len() == 1 || bytes(run) <= RUN_BYTES);
                if let Some(next) = runs.get(i + 1) {
                    let n = next[0];
                    proptest::prop_assert!(
                        run.len() == keys::RUN_MAX
                            || n.0.0 - first >= keys::RUN_SPAN
                            || bytes(run) + (n.1.1 - n.1.0) > RUN_BYTES
                    );
                }
            }
        }
    }
}
