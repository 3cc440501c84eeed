//! Runs the leader example end to end, so it cannot rot.

#[path = "../examples/leader.rs"]
#[allow(dead_code)]
mod leader;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_example_fences_the_stale_leader() {
    let story = leader::run().await.expect("the leader example runs");
    assert!(["earth", "mars"].contains(&story.first_leader.as_str()), "{story:?}");
    assert_eq!(story.race_loser_error, "AlreadyRegistered");
    assert!(story.second_token > story.first_token, "{story:?}");
    let ledger: Vec<&String> = story.journal.iter().filter(|l| l.starts_with("ledger")).collect();
    assert_eq!(ledger.len(), 3, "{ledger:?}");
    assert!(ledger[0].contains("appends \"x=1\""), "{ledger:?}");
    assert!(ledger[1].contains("appends \"x=2\""), "{ledger:?}");
    assert!(ledger[2].contains("refuses \"x=3\""), "{ledger:?}");
    // The stale command never reached a worker; the fresh one did.
    assert!(!story.journal.iter().any(|l| l.contains("\"stale\"")), "{:?}", story.journal);
    assert!(story.journal.iter().any(|l| l.contains("handles command \"fresh\"")), "{:?}", story.journal);
    assert!(story.fence_rejections >= 1);
}
