//! Runs the sessions example end to end, so it cannot rot.

#[path = "../examples/sessions.rs"]
#[allow(dead_code)]
mod sessions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_example_tells_its_story() {
    let story = sessions::run().await.expect("the sessions example runs");
    assert_eq!(story.visible_after_login, vec![300, 300, 300]);
    assert_eq!(story.visible_after_logout, vec![150, 150, 150]);
    let mut handled: Vec<&String> = story.journal.iter().filter(|l| l.contains("handles")).collect();
    handled.sort();
    assert_eq!(handled, vec!["session of user-0 handles \"GET /inbox\"", "session of user-1 handles \"GET /inbox\""]);
    // One owner of session:dana on every node, and exactly one losing session told.
    let owner = story.dana_owners[0].clone().expect("session:dana has an owner");
    assert!(story.dana_owners.iter().all(|o| o.as_ref() == Some(&owner)), "{:?}", story.dana_owners);
    let lost: Vec<&String> = story.journal.iter().filter(|l| l.contains("lost session:dana")).collect();
    assert_eq!(lost, vec!["a session of dana lost session:dana and closes"]);
}
