//! Three `berthd` replicas on loopback: a leader is elected, writes sent to any replica are
//! forwarded to it, and after kill -9 of the leader a new one is elected with every
//! acknowledged job still there. (See also `failover.rs`: the same under continuous load with GPU agents.)

use berth_proto::v1 as pb;
use berth_tests::{berth, cpu_agent, free_port, poll, replica, Proc};

fn status(port: u16) -> Option<pb::ReplicaStatus> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = berth_tests::connect(&format!("http://127.0.0.1:{port}"))
            .await
            .map(pb::admin_service_client::AdminServiceClient::new)
            .ok()?;
        Some(
            c.get_replica_status(pb::ReplicaStatusRequest {})
                .await
                .ok()?
                .into_inner(),
        )
    })
}

/// The leader id once every live replica agrees on it.
fn agreed_leader(ports: &[u16], live: &[usize]) -> Option<u64> {
    let views: Vec<u64> = live
        .iter()
        .map(|i| status(ports[*i]).map(|s| s.leader_id).unwrap_or(0))
        .collect();
    (views[0] != 0 && views.iter().all(|v| *v == views[0])).then_some(views[0])
}

#[test]
fn three_replicas_elect_forward_and_survive_leader_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ports = [free_port(), free_port(), free_port()];
    let mut procs: Vec<Option<Proc>> = (1..=3)
        .map(|id| Some(replica(dir, id, &ports, &[])))
        .collect();
    let leader = poll("a leader", 30, || agreed_leader(&ports, &[0, 1, 2]));
    let servers: String = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let _agent = cpu_agent(
        dir,
        // Only the followers: the agent reaches the leader through their redirect.
        &ports
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as u64 + 1 != leader)
            .map(|(_, p)| format!("http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(","),
    );
    poll("agent registered", 30, || {
        let out = berth(dir, &servers, &["sinfo", "-h", "-N", "-o", "%N"]);
        String::from_utf8_lossy(&out.stdout)
            .contains("cpu1")
            .then_some(())
    });
    // Submit through a follower: it forwards to the leader.
    let follower = (1..=3u64).find(|id| *id != leader).unwrap();
    let via_follower = format!("127.0.0.1:{}", ports[follower as usize - 1]);
    let mut ids = Vec::new();
    for i in 0..3 {
        let out = berth(
            dir,
            &via_follower,
            &[
                "sbatch",
                "--parsable",
                "-J",
                &format!("j{i}"),
                "--wrap",
                "true",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        // Linearizable read (ReadIndex) on the *other* follower, right after the ack.
        let other = (1..=3u64).find(|r| *r != leader && *r != follower).unwrap();
        let shown = berth(
            dir,
            &format!("127.0.0.1:{}", ports[other as usize - 1]),
            &["scontrol", "show", "job", &id],
        );
        assert!(
            shown.status.success(),
            "job {id} not visible on replica {other}: {}",
            String::from_utf8_lossy(&shown.stderr)
        );
        ids.push(id);
    }

    // kill -9 the leader; the other two elect a new one that has every acknowledged job.
    procs[leader as usize - 1] = None;
    let live: Vec<usize> = (0..3).filter(|i| *i != leader as usize - 1).collect();
    let new_leader = poll("a new leader", 30, || {
        agreed_leader(&ports, &live).filter(|l| *l != leader)
    });
    let via_new = format!("127.0.0.1:{}", ports[new_leader as usize - 1]);
    let listed = berth(dir, &via_new, &["squeue", "-h", "-t", "all", "-o", "%i"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    for id in &ids {
        assert!(
            listed.lines().any(|l| l.trim() == id),
            "job {id} lost after failover:\n{listed}"
        );
    }
    // The new leader takes writes, and the jobs run once the agent has found it.
    let out = berth(dir, &servers, &["sbatch", "--parsable", "--wrap", "true"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    poll("every job completed under the new leader", 60, || {
        let out = berth(dir, &via_new, &["squeue", "-h", "-t", "all", "-o", "%T"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (text.lines().count() == 4 && text.lines().all(|l| l.trim() == "COMPLETED")).then_some(())
    });
    drop(procs);
}

#[test]
fn a_replica_that_missed_compacted_entries_catches_up_from_a_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ports = [free_port(), free_port(), free_port()];
    let small = ["--snapshot-entries", "4"];
    let mut procs: Vec<Option<Proc>> = (1..=3)
        .map(|id| Some(replica(dir, id, &ports, &small)))
        .collect();
    let leader = poll("a leader", 30, || agreed_leader(&ports, &[0, 1, 2]));
    let lagging = (1..=3u64).find(|id| *id != leader).unwrap() as usize - 1;
    procs[lagging] = None; // kill -9 a follower
    let _agent = cpu_agent(
        dir,
        &format!("http://127.0.0.1:{}", ports[leader as usize - 1]),
    );
    let via_leader = format!("127.0.0.1:{}", ports[leader as usize - 1]);
    poll("agent registered", 30, || {
        let out = berth(dir, &via_leader, &["sinfo", "-h", "-N", "-o", "%N"]);
        String::from_utf8_lossy(&out.stdout)
            .contains("cpu1")
            .then_some(())
    });
    for i in 0..12 {
        let out = berth(
            dir,
            &via_leader,
            &["sbatch", "-H", "-J", &format!("h{i}"), "--wrap", "true"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let leader_applied = status(ports[leader as usize - 1]).unwrap().applied_index;
    // The log the follower missed is compacted away: it can only catch up by snapshot.
    procs[lagging] = Some(replica(dir, lagging as u64 + 1, &ports, &small));
    poll("follower caught up", 30, || {
        status(ports[lagging])
            .filter(|s| s.applied_index >= leader_applied)
            .map(|_| ())
    });
    let out = berth(
        dir,
        &format!("127.0.0.1:{}", ports[lagging]),
        &["squeue", "-h", "-o", "%j %t %r"],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        text.lines()
            .filter(|l| l.ends_with("PD JobHeldUser"))
            .count(),
        12,
        "{text}"
    );
    drop(procs);
}

#[test]
fn members_are_added_and_removed_at_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let mut procs: Vec<Option<Proc>> = (1..=3)
        .map(|id| Some(replica(dir, id, &ports[..3], &[])))
        .collect();
    let leader = poll("a leader", 30, || agreed_leader(&ports, &[0, 1, 2]));
    let any = format!("127.0.0.1:{}", ports[0]);
    // Replica 4 starts empty (--join) knowing everyone's address, and is added as a voter.
    procs.push(Some(replica(dir, 4, &ports, &["--join"])));
    let add = berth(
        dir,
        &any,
        &[
            "admin",
            "members",
            "add",
            &format!("4=127.0.0.1:{}", ports[3]),
        ],
    );
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    assert!(
        String::from_utf8_lossy(&add.stdout).contains(&format!("4=http://127.0.0.1:{}", ports[3]))
    );
    poll("replica 4 follows the leader", 30, || {
        agreed_leader(&ports, &[0, 1, 2, 3])
    });
    // Bad membership requests are refused and change nothing.
    for (args, want) in [
        (
            vec!["admin", "members", "add", "4=127.0.0.1:1"],
            "already a member",
        ),
        (vec!["admin", "members", "remove", "9"], "not a member"),
        (vec!["admin", "members", "add", "x=1"], "invalid replica id"),
    ] {
        let out = berth(dir, &any, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{args:?}: {err}"
        );
    }
    // Remove a follower that is not the leader, then stop it: 3 voters remain, writes go on.
    let gone = (1..=3u64).find(|id| *id != leader).unwrap();
    let rm = berth(
        dir,
        &any,
        &["admin", "members", "remove", &gone.to_string()],
    );
    assert!(
        rm.status.success(),
        "{}",
        String::from_utf8_lossy(&rm.stderr)
    );
    procs[gone as usize - 1] = None;
    let live: Vec<usize> = (0..4).filter(|i| *i != gone as usize - 1).collect();
    let servers: String = live
        .iter()
        .map(|i| format!("127.0.0.1:{}", ports[*i]))
        .collect::<Vec<_>>()
        .join(",");
    let _agent = cpu_agent(
        dir,
        &live
            .iter()
            .map(|i| format!("http://127.0.0.1:{}", ports[*i]))
            .collect::<Vec<_>>()
            .join(","),
    );
    poll("agent registered", 30, || {
        let out = berth(dir, &servers, &["sinfo", "-h", "-N", "-o", "%N"]);
        String::from_utf8_lossy(&out.stdout)
            .contains("cpu1")
            .then_some(())
    });
    let out = berth(dir, &servers, &["sbatch", "--parsable", "--wrap", "true"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let shown = berth(
        dir,
        &format!("127.0.0.1:{}", ports[3]),
        &["scontrol", "show", "job", &id],
    );
    assert!(
        shown.status.success(),
        "new member cannot read job {id}: {}",
        String::from_utf8_lossy(&shown.stderr)
    );
    drop(procs);
}
