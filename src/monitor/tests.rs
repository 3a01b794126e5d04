//! Unit tests of the rules of `guard watch`.

use super::*;

fn limits() -> Limits {
    Limits {
        failures: 3,
        loop_restarts: 3,
        loop_window: Duration::from_secs(60),
        recover_after: Duration::from_secs(10),
        max_memory: Some(100 * 1_048_576),
    }
}

fn inst(id: u32, status: &str, pid: Option<u32>, restarts: u64) -> Instance {
    Instance {
        name: "api".into(),
        pm_id: id,
        status: status.into(),
        pid,
        restarts,
        ..Instance::default()
    }
}

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn names(m: &mut Monitor) -> Vec<&'static str> {
    m.take_events().iter().map(Event::name).collect()
}

#[test]
fn a_single_crash_is_one_alert_then_recovered_after_a_quiet_time() {
    let mut m = Monitor::new(limits());
    m.baseline(&[inst(0, "online", Some(10), 0)], s(0));
    assert!(names(&mut m).is_empty());
    m.on_pid_change(
        &Change::Exited {
            instance: 0,
            pid: 10,
        },
        s(5),
    );
    assert_eq!(names(&mut m), ["crash"]);
    m.on_instances(&[inst(0, "online", Some(11), 1)], s(6));
    assert!(names(&mut m).is_empty(), "the same crash is not news twice");
    m.on_tick(s(10));
    assert!(names(&mut m).is_empty(), "not quiet long enough yet");
    m.on_tick(s(16));
    let ev = m.take_events();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].name(), "recovered");
    assert_eq!(ev[0].resolves(), Some("crash"));
}

#[test]
fn a_crash_loop_is_one_loop_alert_with_a_count_and_one_gave_up() {
    let mut m = Monitor::new(limits());
    m.baseline(&[inst(0, "online", Some(10), 0)], s(0));
    let mut all = Vec::new();
    for (t, r) in [(1, 1), (2, 2), (3, 4), (4, 6), (5, 8)] {
        m.on_instances(&[inst(0, "online", Some(10 + r as u32), r)], s(t));
        all.extend(m.take_events());
    }
    m.on_instances(&[inst(0, "errored", None, 8)], s(6));
    all.extend(m.take_events());
    let words: Vec<_> = all.iter().map(Event::name).collect();
    assert_eq!(words, ["crash", "crash_loop", "gave_up"]);
    assert_eq!(all[1].count(), Some(4));
    assert_eq!(all[2].count(), Some(8));
    assert!(m.wants_rollback());
    m.on_tick(s(100));
    assert!(names(&mut m).is_empty(), "errored is not recovered");
}

#[test]
fn a_loop_of_spaced_restarts_is_one_alert_and_one_recovered_when_the_window_empties() {
    let mut m = Monitor::new(Limits {
        recover_after: s(20),
        ..limits()
    });
    m.baseline(&[inst(0, "online", Some(1), 0)], s(0));
    for r in 1..=6u64 {
        m.on_instances(&[inst(0, "online", Some(1 + r as u32), r)], s(r * 25));
        m.on_tick(s(r * 25 + 21));
    }
    assert_eq!(
        names(&mut m),
        ["crash", "recovered", "crash", "recovered", "crash_loop"]
    );
    m.on_tick(s(150 + 30));
    assert!(names(&mut m).is_empty(), "restarts still in the window");
    m.on_tick(s(150 + 61));
    let ev = m.take_events();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].resolves(), Some("crash_loop"));
}

#[test]
fn a_crash_after_a_recovered_is_a_new_episode_and_alerted() {
    let mut m = Monitor::new(limits());
    m.baseline(&[inst(0, "online", Some(10), 0)], s(0));
    m.on_instances(&[inst(0, "online", Some(11), 1)], s(1));
    m.on_tick(s(12));
    assert_eq!(names(&mut m), ["crash", "recovered"]);
    // Within the loop window, but after the all-clear: somebody must hear of it.
    m.on_instances(&[inst(0, "online", Some(12), 2)], s(20));
    assert_eq!(names(&mut m), ["crash"]);
}

#[test]
fn restarts_spread_wider_than_the_window_are_not_a_loop() {
    let mut m = Monitor::new(Limits {
        recover_after: s(1000),
        ..limits()
    });
    m.baseline(&[inst(0, "online", Some(1), 0)], s(0));
    for r in 1..=5u64 {
        m.on_instances(&[inst(0, "online", Some(1 + r as u32), r)], s(r * 100));
    }
    assert_eq!(names(&mut m), ["crash"]);
    assert!(!m.wants_rollback());
}

#[test]
fn health_alerts_after_n_failures_and_clears_after_n_passes() {
    let mut m = Monitor::new(limits());
    m.baseline(&[inst(0, "online", Some(1), 0)], s(0));
    let fail = ProbeOutcome::Status(500);
    let pass = ProbeOutcome::Pass(200);
    m.on_probe(&fail, s(1));
    m.on_probe(&fail, s(2));
    assert!(names(&mut m).is_empty());
    m.on_probe(&fail, s(3));
    assert_eq!(names(&mut m), ["health_failing"]);
    m.on_probe(&fail, s(4));
    m.on_probe(&pass, s(5));
    m.on_probe(&pass, s(6));
    assert!(names(&mut m).is_empty());
    assert!(m.wants_rollback());
    m.on_probe(&pass, s(7));
    assert_eq!(names(&mut m), ["recovered"]);
    assert!(!m.wants_rollback());
}

#[test]
fn a_flapping_health_check_is_one_alert_per_window_not_one_per_spell() {
    let mut m = Monitor::new(limits());
    m.baseline(&[inst(0, "online", Some(10), 0)], s(0));
    let fail = ProbeOutcome::Status(500);
    let pass = ProbeOutcome::Pass(200);
    let mut t = 0u64;
    // 3 failures, 3 passes, over and over for two minutes (5 s apart).
    while t < 120 {
        for _ in 0..3 {
            t += 5;
            m.on_probe(&fail, s(t));
            m.on_tick(s(t));
        }
        for _ in 0..3 {
            t += 5;
            m.on_probe(&pass, s(t));
            m.on_tick(s(t));
        }
    }
    let words = names(&mut m);
    assert_eq!(
        words,
        [
            "health_failing",
            "recovered",
            "health_failing",
            "recovered",
            "health_flapping"
        ],
        "bounded, whatever the flapping goes on for"
    );
    assert!(m.wants_rollback());
    // A whole window of passes: one recovered for the flapping.
    for _ in 0..13 {
        t += 5;
        m.on_probe(&pass, s(t));
        m.on_tick(s(t));
    }
    let ev = m.take_events();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].resolves(), Some("health_flapping"));
}

#[test]
fn a_probe_failing_during_a_crash_is_not_a_second_alert() {
    let mut m = Monitor::new(limits());
    m.baseline(&[inst(0, "online", Some(1), 0)], s(0));
    m.on_instances(&[inst(0, "online", Some(2), 1)], s(1));
    for t in 2..6 {
        m.on_probe(&ProbeOutcome::NotListening("refused".into()), s(t));
    }
    assert_eq!(names(&mut m), ["crash"]);
    for t in 6..9 {
        m.on_probe(&ProbeOutcome::Pass(200), s(t));
    }
    m.on_tick(s(20));
    assert_eq!(names(&mut m), ["recovered"]);
}

#[test]
fn an_app_already_down_or_gone_is_reported_once() {
    let mut m = Monitor::new(limits());
    m.baseline(&[], s(0));
    assert_eq!(names(&mut m), ["gave_up"]);
    m.on_instances(&[], s(5));
    assert!(names(&mut m).is_empty());
}

#[test]
fn memory_and_artifacts_alert_once_and_clear() {
    let mut m = Monitor::new(limits());
    m.baseline(&[inst(0, "online", Some(1), 0)], s(0));
    m.on_memory(0, 150 * 1_048_576, s(1));
    m.on_memory(0, 160 * 1_048_576, s(2));
    m.on_memory(0, 95 * 1_048_576, s(3));
    assert_eq!(names(&mut m), ["memory_high"]);
    m.on_memory(0, 50 * 1_048_576, s(4));
    assert_eq!(names(&mut m), ["recovered"]);
    m.on_artifacts(vec!["dist/".into()], s(5));
    m.on_artifacts(vec!["dist/".into()], s(6));
    m.on_artifacts(vec![], s(7));
    assert_eq!(names(&mut m), ["artifacts", "recovered"]);
}

#[test]
fn after_a_guard_run_only_what_it_started_counts_from_zero() {
    let inst = |id: u32, created: i64, restarts: u64| crate::pm2::Instance {
        pm_id: id,
        created_at_ms: Some(created),
        restarts,
        status: "online".into(),
        ..Default::default()
    };
    let list = vec![inst(0, 5_000, 2), inst(1, 1_000, 4)];
    let base = super::as_started(&list, 4_000);
    // Started by the run (created after it began): its restarts are news from now on.
    assert_eq!(base[0].restarts, 0);
    // Left alone: its restarts were there before the run.
    assert_eq!(base[1].restarts, 4);
}
