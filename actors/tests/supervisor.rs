//! Behaviour of the OTP-style supervisor (SPEC 6.1): strategies, restart types, intensity and
//! escalation, ordered shutdown with a bounded grace, nesting. Tests run on a current-thread
//! runtime; waits are bounded polls with deadlines; an absence ("not restarted") is checked after
//! every runnable task has run, and by the whole event log once the supervisor has shut down.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cohort_actors::supervisor::{
    ABORT_WAIT, ChildError, ChildExit, ChildSpec, MAX_CHILDREN, MAX_SHUTDOWN_GRACE, Restart, RestartIntensity,
    StopSignal, Strategy, Supervisor, SupervisorError, SupervisorMetrics, SupervisorSpec, SupervisorStatus,
};
use prometheus::Registry;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long a test waits for a behaviour before failing.
const DEADLINE: Duration = Duration::from_secs(10);

/// An intensity no test reaches by accident.
const LENIENT: RestartIntensity = RestartIntensity::new(10, Duration::from_secs(5));

// ------------------------------------------------------------------------------------------ fixture

/// The ordered events children record: `start:<name>`, `stop:<name>` (saw its stop signal),
/// `dropped:<name>` (its future was dropped, e.g. aborted).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, event: String) {
        self.0.lock().unwrap().push(event);
    }

    fn events(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    fn count(&self, event: &str) -> usize {
        self.0.lock().unwrap().iter().filter(|e| *e == event).count()
    }

    /// The events recorded after the first `skip`.
    fn since(&self, skip: usize) -> Vec<String> {
        self.events().into_iter().skip(skip).collect()
    }
}

/// What a test tells a worker to do.
enum Command {
    /// Return `Err`.
    Fail,
    /// Panic.
    Panic,
    /// Return `Ok(())`.
    Exit,
}

/// A worker child: logs its start, then waits for its stop signal (logs it, returns `Ok`) or a
/// command. The command channel is shared by all its incarnations.
fn worker(name: &'static str, restart: Restart, log: &Log) -> (ChildSpec, mpsc::Sender<Command>) {
    let (commands, receiver) = mpsc::channel(8);
    let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
    let log = log.clone();
    let spec = ChildSpec::new(name, restart, move |stop: StopSignal| {
        let receiver = Arc::clone(&receiver);
        let log = log.clone();
        async move {
            log.push(format!("start:{name}"));
            let mut receiver = receiver.lock().await;
            tokio::select! {
                () = stop.wait() => {
                    assert!(stop.is_stopped());
                    log.push(format!("stop:{name}"));
                    Ok(())
                }
                command = receiver.recv() => match command {
                    Some(Command::Fail) => Err(ChildError::failed(format!("{name} failed"))),
                    Some(Command::Panic) => panic!("{name} panicked"),
                    Some(Command::Exit) | None => Ok(()),
                },
            }
        }
    });
    (spec, commands)
}

/// Logs `dropped:<name>` when the future holding it is dropped.
struct DropLog(Log, &'static str);

impl Drop for DropLog {
    fn drop(&mut self) {
        self.0.push(format!("dropped:{}", self.1));
    }
}

struct Fixture {
    registry: Registry,
    metrics: SupervisorMetrics,
    log: Log,
}

impl Fixture {
    fn new() -> Self {
        let registry = Registry::new();
        let metrics = SupervisorMetrics::register(&registry).unwrap();
        Self { registry, metrics, log: Log::default() }
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let families = self.registry.gather();
        let Some(family) = families.iter().find(|f| f.name() == name) else { return f64::NAN };
        family
            .get_metric()
            .iter()
            .find(|m| labels.iter().all(|(k, v)| m.get_label().iter().any(|l| l.name() == *k && l.value() == *v)))
            .map_or(f64::NAN, |m| m.get_counter().get_value())
    }

    fn restarts(&self, supervisor: &str, child: &str) -> f64 {
        self.counter("cohort_supervisor_restarts_total", &[("supervisor", supervisor), ("child", child)])
    }

    fn escalations(&self, supervisor: &str) -> f64 {
        self.counter("cohort_supervisor_escalations_total", &[("supervisor", supervisor)])
    }

    async fn until(&self, what: &str, condition: impl Fn(&Log) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !condition(&self.log) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}; log: {:?}", self.log.events());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn started(&self, name: &str, times: usize) {
        let event = format!("start:{name}");
        self.until(&format!("{event} x{times}"), |log| log.count(&event) >= times).await;
    }
}

/// Lets every runnable task run (the tests' runtime has one thread, and these tasks wait on no
/// timer), so what would follow an event has happened by the time this returns.
async fn settle() {
    for _ in 0..256 {
        tokio::task::yield_now().await;
    }
}

async fn terminated(supervisor: &Supervisor) -> SupervisorStatus {
    tokio::time::timeout(DEADLINE, supervisor.terminated()).await.expect("supervisor did not terminate")
}

// ------------------------------------------------------------------------------------- one_for_one

async fn one_for_one_restarts_only_the_crashed_child(command: Command) {
    let fx = Fixture::new();
    let (a, _a) = worker("a", Restart::Permanent, &fx.log);
    let (b, b_commands) = worker("b", Restart::Permanent, &fx.log);
    let (c, _c) = worker("c", Restart::Permanent, &fx.log);
    let spec = SupervisorSpec::new("sup", Strategy::OneForOne)
        .with_intensity(LENIENT)
        .with_child(a)
        .with_child(b)
        .with_child(c);
    let supervisor = Supervisor::start(spec, &fx.metrics).unwrap();
    fx.started("c", 1).await;
    assert_eq!(fx.log.events(), ["start:a", "start:b", "start:c"]);

    b_commands.send(command).await.unwrap();
    fx.started("b", 2).await;
    settle().await;
    assert_eq!(fx.log.since(3), ["start:b"], "only b is restarted, and nobody is stopped");
    assert_eq!(fx.restarts("sup", "b"), 1.0);
    assert_eq!(fx.restarts("sup", "a"), 0.0);
    assert_eq!(fx.restarts("sup", "c"), 0.0);
    assert_eq!(supervisor.status(), SupervisorStatus::Running);
    assert_eq!(supervisor.shutdown().await, SupervisorStatus::Stopped);
    assert_eq!(fx.log.since(4), ["stop:c", "stop:b", "stop:a"]);
}

#[tokio::test]
async fn one_for_one_restarts_only_the_child_that_returned_err() {
    one_for_one_restarts_only_the_crashed_child(Command::Fail).await;
}

#[tokio::test]
async fn one_for_one_restarts_only_the_child_that_panicked() {
    one_for_one_restarts_only_the_crashed_child(Command::Panic).await;
}

#[tokio::test]
async fn permanent_child_is_restarted_after_a_normal_exit() {
    let fx = Fixture::new();
    let (a, a_commands) = worker("a", Restart::Permanent, &fx.log);
    let spec = SupervisorSpec::new("sup", Strategy::OneForOne).with_intensity(LENIENT).with_child(a);
    let supervisor = Supervisor::start(spec, &fx.metrics).unwrap();
    fx.started("a", 1).await;
    a_commands.send(Command::Exit).await.unwrap();
    fx.started("a", 2).await;
    assert_eq!(fx.restarts("sup", "a"), 1.0);
    assert_eq!(supervisor.shutdown().await, SupervisorStatus::Stopped);
}

// ------------------------------------------------------------------------------------ rest_for_one

#[tokio::test]
async fn rest_for_one_restarts_the_crashed_child_and_later_ones_in_order() {
    let fx = Fixture::new();
    let (a, _a) = worker("a", Restart::Permanent, &fx.log);
    let (b, b_commands) = worker("b", Restart::Permanent, &fx.log);
    let (c, _c) = worker("c", Restart::Permanent, &fx.log);
    let (d, d_commands) = worker("d", Restart::Permanent, &fx.log);
    let spec = SupervisorSpec::new("sup", Strategy::RestForOne)
        .with_intensity(LENIENT)
        .with_child(a)
        .with_child(b)
        .with_child(c)
        .with_child(d);
    let supervisor = Supervisor::start(spec, &fx.metrics).unwrap();
    fx.started("d", 1).await;

    b_commands.send(Command::Panic).await.unwrap();
    fx.started("d", 2).await;
    settle().await;
    // Later children are stopped last first (each sees its stop signal), then b, c, d start in order.
    assert_eq!(fx.log.since(4), ["stop:d", "stop:c", "start:b", "start:c", "start:d"]);
    for (child, restarts) in [("a", 0.0), ("b", 1.0), ("c", 1.0), ("d", 1.0)] {
        assert_eq!(fx.restarts("sup", child), restarts, "restarts of {child}");
    }

    // The last child's crash restarts only itself.
    d_commands.send(Command::Fail).await.unwrap();
    fx.started("d", 3).await;
    settle().await;
    assert_eq!(fx.log.since(9), ["start:d"]);
    assert_eq!(supervisor.shutdown().await, SupervisorStatus::Stopped);
}

#[tokio::test]
async fn rest_for_one_stops_but_does_not_restart_a_temporary_sibling() {
    let fx = Fixture::new();
    let (a, a_commands) = worker("a", Restart::Permanent, &fx.log);
    let (t, _t) = worker("t", Restart::Temporary, &fx.log);
    let (c, _c) = worker("c", Restart::Permanent, &fx.log);
    let spec = SupervisorSpec::new("sup", Strategy::RestForOne)
        .with_intensity(LENIENT)
        .with_child(a)
        .with_child(t)
        .with_child(c);
    let supervisor = Supervisor::start(spec, &fx.metrics).unwrap();
    fx.started("c", 1).await;
    a_commands.send(Command::Fail).await.unwrap();
    fx.started("c", 2).await;
    settle().await;
    assert_eq!(fx.log.since(3), ["stop:c", "stop:t", "start:a", "start:c"]);
    assert_eq!(fx.restarts("sup", "t"), 0.0);
    assert_eq!(supervisor.shutdown().await, SupervisorStatus::Stopped);
}

// ----------------------------------------------------------------------------------- restart types

#[tokio::test]
async fn transient_child_is_restarted_after_an_error_but_not_after_a_normal_exit() {
    let fx = Fixture::new();
    let (t, t_commands) = worker("t", Restart::Transient, &fx.log);
    let spec = SupervisorSpec::new("sup", Strategy::OneForOne).with_intensity(LENIENT).with_child(t);
    let supervisor = Supervisor::start(spec, &fx.metrics).unwrap();
    fx.started("t", 1).await;

    t_commands.send(Command::Fail).await.unwrap();
    fx.started("t", 2).await;
    t_commands.send(Command::Panic).await.unwrap();
    fx.started("t", 3).await;
    t_commands.send(Command::Exit).await.unwrap();
    settle().await;
    assert_eq!(supervisor.shutdown().await, SupervisorStatus::Stopped);
    assert_eq!(fx.log.count("start:t"), 3, "a normal exit of a transient child is final");
    assert_eq!(fx.log.count("stop:t"), 0);
    assert_eq!(fx.restarts("sup", "t"), 2.0);
}

#[tokio::test]
async fn temporary_child_is_never_restarted() {
    let fx = Fixture::new();
    let (failing, failing_commands) = worker("failing", Restart::Temporary, &fx.log);
    let (panicking, panicking_commands) = worker("panicking", Restart::Temporary, &fx.log);
    let (done, done_commands) = worker("done", Restart::Temporary, &fx.log);
    let spec = SupervisorSpec::new("sup", Strategy::OneForOne)
        // A restart would escalate at once: a temporary child's exit is no restart.
        .with_intensity(RestartIntensity::new(0, Duration::from_secs(5)))
        .with_child(failing)
        .with_child(panicking)
        .with_child(done);
    let supervisor = Supervisor::start(spec, &fx.metrics).unwrap();
    fx.started("done", 1).await;
    failing_commands.send(Command::Fail).await.unwrap();
    panicking_commands.send(Command::Panic).await.unwrap();
    done_commands.send(Command::Exit).await.unwrap();
    settle().await;
    assert_eq!(supervisor.status(), SupervisorStatus::Running);
    assert_eq!(supervisor.shutdown().await, SupervisorStatus::Stopped);
    assert_eq!(fx.log.events(), ["start:failing", "start:panicking", "start:done"]);
    assert_eq!(fx.escalations("sup"), 0.0);
}

// --------------------------------------------------------------------------------------- intensity

#[tokio::test]
async fn intensity_exceeded_stops_every_child_and_escalates() {
    let fx = Fixture::new();
    let (a, _a) = worker("a", Restart::Permanent, &fx.log);
    let (b, b_commands) = worker("b", Restart::Permanent, &fx.log);
    let (c, _c) = worker("c", Restart::Permanent, &fx.log);
    let spec = SupervisorSpec::new("sup", Strategy::OneForOne)
        .with_intensity(RestartIntensity::new(2, Duration::from_secs(5)))
        .with_child(a)
        .with_child(b)
        .with_child(c);
    let supervisor = Supervisor::start(spec, &fx.metrics).unwrap();
    let mut status = supervisor.subscribe();
    fx.started("c", 1).await;

    for restart in 1..=2 {
        b_commands.send(Command::Fail).await.unwrap();
        fx.started("b", restart + 1).await;
    }
    assert_eq!(supervisor.status(), SupervisorStatus::Running);
    b_commands.send(Command::Fail).await.unwrap();

    let expected = SupervisorStatus::Escalated { child: "b", exit: ChildExit::Error("b failed".to_owned()) };
    assert_eq!(terminated(&supervisor).await, expected);
    assert_eq!(*status.borrow_and_update(), expected);
    let events = fx.log.events();
    assert_eq!(&events[events.len() - 2..], ["stop:c", "stop:a"], "every other child stopped, last first");
    assert_eq!(fx.log.count("start:b"), 3, "no restart beyond the intensity");
    assert_eq!(fx.restarts("sup", "b"), 2.0);
    assert_eq!(fx.escalations("sup"), 1.0);
    // Shutting down an escalated supervisor reports the escalation.
    assert_eq!(supervisor.shutdown().await, expected);
}

#[tokio::test]
async fn restarts_outside_the_intensity_window_do_not_escalate() {
    let fx = Fixture::new();
    let window = Duration::from_millis(250);
    let (a, a_commands) = worker("a", Restart::Permanent, &fx.log);
    let spec =
        SupervisorSpec::new("sup", Strategy::OneForOne).with_intensity(RestartIntensity::new(1, window)).with_child(a);
    let supervisor = Supervisor::start(spec, &fx.metrics).unwrap();
    fx.started("a", 1).await;
    for restart in 1..=3 {
        a_commands.send(Command::Panic).await.unwrap();
        fx.started("a", restart + 1).await;
        tokio::time::sleep(window + Duration::from_millis(50)).await;
    }
    assert_eq!(supervisor.status(), SupervisorStatus::Running);
    assert_eq!(fx.restarts("sup", "a"), 3.0);

    // Two within the window: more than one escalates.
    a_commands.send(Command::Panic).await.unwrap();
    fx.started("a", 5).await;
    a_commands.send(Command::Panic).await.unwrap();
    assert!(terminated(&supervisor).await.is_escalated());
    assert_eq!(fx.escalations("sup"), 1.0);
}

// ---------------------------------------------------------------------------------------- shutdown

#[tokio::test]
async fn shutdown_stops_children_in_reverse_order_and_they_observe_their_stop_signal() {
    let fx = Fixture::new();
    let mut spec = SupervisorSpec::new("sup", Strategy::RestForOne);
    let mut commands = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let (child, sender) = worker(name, Restart::Permanent, &fx.log);
        spec = spec.with_child(child);
        commands.push(sender);
    }
    let supervisor = Supervisor::start(spec, &fx.metrics).unwrap();
    fx.started("d", 1).await;
    let began = Instant::now();
    assert_eq!(supervisor.shutdown().await, SupervisorStatus::Stopped);
    assert!(began.elapsed() < Duration::from_secs(1), "children that obey stop are not waited for their grace");
    assert_eq!(fx.log.since(4), ["stop:d", "stop:c", "stop:b", "stop:a"]);
    assert_eq!(supervisor.status(), SupervisorStatus::Stopped);
    // Idempotent.
    assert_eq!(supervisor.shutdown().await, SupervisorStatus::Stopped);
}

#[tokio::test]
async fn child_that_ignores_its_stop_signal_is_aborted_after_its_grace() {
    let fx = Fixture::new();
    let grace = Duration::from_millis(200);
    let (polite, _polite) = worker("polite", Restart::Permanent, &fx.log);
    let log = fx.log.clone();
    let stubborn = ChildSpec::new("stubborn", Restart::Permanent, move |_stop: StopSignal| {
        let log = log.clone();
        async move {
            log.push("start:stubborn".to_owned());
            let _dropped = DropLog(log, "stubborn");
            std::future::pending::<()>().await;
            Ok(())
        }
    })
    .with_shutdown(grace);
    let spec = SupervisorSpec::new("sup", Strategy::OneForOne).with_child(polite).with_child(stubborn);
    let supervisor = Supervisor::start(spec, &fx.metrics).unwrap();
    fx.started("stubborn", 1).await;

    let began = Instant::now();
    assert_eq!(supervisor.shutdown().await, SupervisorStatus::Stopped);
    let took = began.elapsed();
    assert!(took >= grace && took < grace + ABORT_WAIT, "shutdown took {took:?}");
    assert_eq!(fx.log.since(2), ["dropped:stubborn", "stop:polite"]);
    assert_eq!(fx.restarts("sup", "stubborn"), 0.0, "an aborted child is not restarted");
}

#[tokio::test]
async fn dropping_every_handle_shuts_the_supervisor_down() {
    let fx = Fixture::new();
    let (a, _a) = worker("a", Restart::Permanent, &fx.log);
    let (b, _b) = worker("b", Restart::Permanent, &fx.log);
    let spec = SupervisorSpec::new("sup", Strategy::OneForOne).with_child(a).with_child(b);
    let supervisor = Supervisor::start(spec, &fx.metrics).unwrap();
    let mut status = supervisor.subscribe();
    fx.started("b", 1).await;
    drop(supervisor.clone());
    settle().await;
    assert_eq!(*status.borrow_and_update(), SupervisorStatus::Running, "a clone keeps it running");
    drop(supervisor);
    fx.until("both children stopped", |log| log.count("stop:a") == 1).await;
    assert_eq!(fx.log.since(2), ["stop:b", "stop:a"]);
    tokio::time::timeout(DEADLINE, status.wait_for(|s| *s == SupervisorStatus::Stopped)).await.unwrap().unwrap();
}

// ------------------------------------------------------------------------------------------ nesting

#[tokio::test]
async fn nested_supervisor_escalation_is_a_crash_its_parent_restarts() {
    let fx = Fixture::new();
    let (w, w_commands) = worker("w", Restart::Permanent, &fx.log);
    let (x, _x) = worker("x", Restart::Permanent, &fx.log);
    let inner = SupervisorSpec::new("inner", Strategy::OneForOne)
        .with_intensity(RestartIntensity::new(0, Duration::from_secs(5)))
        .with_child(w);
    let parent = SupervisorSpec::new("parent", Strategy::OneForOne)
        .with_intensity(LENIENT)
        .with_child(inner.into_child_spec(Restart::Permanent, &fx.metrics).unwrap())
        .with_child(x);
    let supervisor = Supervisor::start(parent, &fx.metrics).unwrap();
    fx.started("w", 1).await;
    fx.started("x", 1).await;

    w_commands.send(Command::Fail).await.unwrap();
    fx.started("w", 2).await;
    settle().await;
    assert_eq!(fx.escalations("inner"), 1.0);
    assert_eq!(fx.restarts("parent", "inner"), 1.0);
    assert_eq!(fx.restarts("parent", "x"), 0.0);
    assert_eq!(fx.restarts("inner", "w"), 0.0);
    assert_eq!(fx.log.count("start:x"), 1);
    assert_eq!(supervisor.status(), SupervisorStatus::Running);

    // The parent's shutdown reaches the grandchildren through the nested supervisor.
    assert_eq!(supervisor.shutdown().await, SupervisorStatus::Stopped);
    let events = fx.log.events();
    assert_eq!(&events[events.len() - 2..], ["stop:x", "stop:w"]);
}

// ---------------------------------------------------------------------------------------- refusals

#[tokio::test]
async fn start_refuses_invalid_specs() {
    let fx = Fixture::new();
    let idle = |stop: StopSignal| async move {
        stop.wait().await;
        Ok(())
    };

    let mut crowded = SupervisorSpec::new("crowded", Strategy::OneForOne);
    for index in 0..=MAX_CHILDREN {
        let name: &'static str = Box::leak(format!("c{index}").into_boxed_str());
        crowded = crowded.with_child(ChildSpec::new(name, Restart::Permanent, idle));
    }
    assert!(matches!(
        Supervisor::start(crowded, &fx.metrics),
        Err(SupervisorError::TooManyChildren { count, max: MAX_CHILDREN, .. }) if count == MAX_CHILDREN + 1
    ));

    let twins = SupervisorSpec::new("twins", Strategy::OneForOne)
        .with_child(ChildSpec::new("same", Restart::Permanent, idle))
        .with_child(ChildSpec::new("same", Restart::Temporary, idle));
    assert!(matches!(
        Supervisor::start(twins, &fx.metrics),
        Err(SupervisorError::DuplicateChild { child: "same", .. })
    ));

    let slow = SupervisorSpec::new("slow", Strategy::OneForOne)
        .with_child(ChildSpec::new("slow", Restart::Permanent, idle).with_shutdown(MAX_SHUTDOWN_GRACE * 2));
    assert!(matches!(
        Supervisor::start(slow, &fx.metrics),
        Err(SupervisorError::ShutdownGraceTooLong { child: "slow", .. })
    ));

    let instant =
        SupervisorSpec::new("instant", Strategy::OneForOne).with_intensity(RestartIntensity::new(1, Duration::ZERO));
    assert!(matches!(Supervisor::start(instant, &fx.metrics), Err(SupervisorError::ZeroIntensityWindow)));
    assert!(matches!(
        SupervisorSpec::new("nested", Strategy::OneForOne)
            .with_intensity(RestartIntensity::new(u32::MAX, Duration::from_secs(1)))
            .into_child_spec(Restart::Permanent, &fx.metrics),
        Err(SupervisorError::IntensityTooHigh { .. })
    ));
}

#[test]
fn start_outside_a_runtime_is_refused() {
    let fx = Fixture::new();
    let spec = SupervisorSpec::new("sup", Strategy::OneForOne);
    assert!(matches!(Supervisor::start(spec, &fx.metrics), Err(SupervisorError::NoRuntime)));
}
