//! `scontrol`: the verbs (show, hold/release, requeue, update, reservations,
//! reconfigure) and where each lives. Showing is formatting only and needs no server for
//! host lists; updating parses Slurm's `Key=Value` words and refuses a key it does not
//! take by name, before anything is sent.
//!
//! # Layout
//! - [`show_job`]: `show job` records, Slurm's keys in Slurm's order, and output paths.
//! - [`show_cluster`]: `show node`, `show partition`, `show topology`.
//! - [`hosts`]: `show hostnames` / `show hostlist`.
//! - [`job_update`]: `update JobId=… ArrayTaskThrottle=… TimeLimit=…`.
//! - [`node_update`]: `update NodeName=… State=DRAIN|RESUME`, and a GPU's `State=RESUME`.

pub mod hosts;
pub mod job_update;
pub mod node_update;
pub mod show_cluster;
pub mod show_job;

pub use hosts::show_hosts;
pub use show_cluster::{show_node, show_partitions, show_topology};
pub use show_job::{expand_pattern, records, show_job};

use crate::client::{self, status_text};
use crate::job_query;
use crate::opt::job_id::parse_job_list;
use berth_proto::v1 as pb;

pub async fn run(args: Vec<String>) -> anyhow::Result<i32> {
    // `-o`/`--oneliner` (anywhere, as Slurm takes it): each record on one line.
    let oneliner = args.iter().any(|a| a == "-o" || a == "--oneliner");
    let words: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "-o" && *a != "--oneliner")
        .collect();
    // Host list conversions are local, as in Slurm: no berthd needed.
    if let ["show", what @ ("hostnames" | "hostlist"), rest @ ..] = words.as_slice() {
        let env = std::env::var("SLURM_JOB_NODELIST").ok();
        print!("{}", show_hosts(what, rest, env.as_deref())?);
        return Ok(0);
    }
    let channel = client::connect(&client::servers(None)).await?;
    match words.as_slice() {
        ["show", "job" | "jobs", rest @ ..] => {
            let refs = parse_job_list(rest).map_err(anyhow::Error::msg)?;
            let jobs = job_query::show_jobs(client::jobs(channel), &refs).await?;
            if jobs.is_empty() {
                println!("No jobs in the system");
            }
            let now = crate::now_ms();
            let text: Vec<String> = jobs.iter().map(|j| show_job(j, now)).collect();
            print!("{}", records(&text, oneliner));
            Ok(0)
        }
        ["show", "step" | "steps", rest @ ..] => {
            let what = match rest {
                [] => None,
                [one] => Some(crate::step_view::parse_step_ref(one).map_err(anyhow::Error::msg)?),
                _ => anyhow::bail!("scontrol show step takes one step id (12.0, 12_3.0 or 12)"),
            };
            let job_ids = what
                .iter()
                .filter_map(|w| w.job.split('_').next()?.parse().ok())
                .collect();
            let jobs = job_query::running_jobs(client::jobs(channel), job_ids, vec![]).await?;
            match crate::step_view::show(&jobs, what.as_ref()) {
                Ok(text) => {
                    print!("{text}");
                    Ok(0)
                }
                Err(e) => {
                    println!("{e}");
                    Ok(1)
                }
            }
        }
        ["show", "topology"] => {
            use berth_proto::v1::admin_service_client::AdminServiceClient;
            let t = AdminServiceClient::new(channel)
                .get_topology(pb::TopologyRequest {})
                .await
                .map_err(|s| anyhow::anyhow!("{}", status_text(&s)))?
                .into_inner();
            print!("{}", show_topology(&t));
            Ok(0)
        }
        ["show", "partition" | "partitions", rest @ ..] => {
            use berth_proto::v1::admin_service_client::AdminServiceClient;
            let toml = AdminServiceClient::new(channel.clone())
                .get_accounts(pb::AccountsRequest {})
                .await
                .map_err(|s| anyhow::anyhow!("{}", status_text(&s)))?
                .into_inner()
                .toml;
            let cfg = berth_scheduler::accounts::parse(&toml)
                .map_err(|e| anyhow::anyhow!("the server's accounts configuration: {e}"))?;
            let nodes = list_nodes(channel).await?;
            let text = show_partitions(&nodes, &cfg.policy, rest);
            if text.is_empty() {
                anyhow::bail!("Partition {} not found", rest.join(","));
            }
            print!("{text}");
            Ok(0)
        }
        ["show", "node" | "nodes", rest @ ..] => {
            let nodes = list_nodes(channel).await?;
            let shown: Vec<_> = nodes
                .iter()
                .filter(|n| {
                    rest.is_empty()
                        || n.inventory
                            .as_ref()
                            .is_some_and(|i| rest.contains(&i.name.as_str()))
                })
                .collect();
            if shown.is_empty() {
                anyhow::bail!("Node {} not found", rest.join(","));
            }
            let text: Vec<String> = shown.iter().map(|n| show_node(n)).collect();
            print!("{}", text.join("\n"));
            Ok(0)
        }
        [verb @ ("hold" | "release" | "uhold"), ids @ ..] if !ids.is_empty() => {
            let refs = parse_job_list(ids).map_err(anyhow::Error::msg)?;
            let c = client::jobs(channel);
            let mut code = 0;
            for r in refs {
                let req = pb::HoldRequest {
                    job_id: r.job_id,
                    hold: *verb != "release",
                    array_tasks: r.task_ranges(),
                };
                let held =
                    client::retried(&c, req, |mut c, req| async move { c.hold(req).await }).await;
                if let Err(s) = held {
                    eprintln!("scontrol: error: {verb} job {r}: {}", status_text(&s));
                    code = 1;
                }
            }
            Ok(code)
        }
        ["requeue", ids @ ..] if !ids.is_empty() => {
            let refs = parse_job_list(ids).map_err(anyhow::Error::msg)?;
            let mut c = client::jobs(channel);
            let mut code = 0;
            for r in refs {
                // A task that runs (or ran) is a record of its own: find its id.
                let ids = match &r.tasks {
                    None => vec![r.job_id],
                    Some(tasks) => {
                        let list = c
                            .list(pb::ListJobsRequest {
                                job_ids: vec![r.job_id],
                                include_finished: true,
                                brief: true,
                                ..Default::default()
                            })
                            .await
                            .map_err(|s| anyhow::anyhow!("{}", status_text(&s)))?
                            .into_inner();
                        list.jobs
                            .iter()
                            .filter(|j| j.array_job_id == r.job_id)
                            .filter(|j| j.array_task_id.is_some_and(|t| tasks.contains(t)))
                            .map(|j| j.id)
                            .collect()
                    }
                };
                if ids.is_empty() {
                    eprintln!("scontrol: error: requeue job {r}: Job is pending execution");
                    code = 1;
                }
                for id in ids {
                    let requeued = client::retried(&c, id, |mut c, job_id| async move {
                        c.requeue(pb::RequeueRequest { job_id }).await
                    })
                    .await;
                    if let Err(s) = requeued {
                        eprintln!("scontrol: error: requeue job {r}: {}", status_text(&s));
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
        [op @ ("create" | "update" | "delete"), "reservation" | "reservationname", rest @ ..]
        | [op @ ("create" | "update" | "delete"), rest @ ..]
            if *op != "update"
                || rest
                    .first()
                    .is_some_and(|w| w.to_ascii_lowercase().starts_with("reservation")) =>
        {
            use berth_proto::v1::admin_service_client::AdminServiceClient;
            let c = crate::reservation::parse_change(op, rest, chrono::Local::now().naive_local())
                .map_err(anyhow::Error::msg)?;
            let admin = AdminServiceClient::new(channel);
            let done = client::retried(&admin, c, |mut admin, c| async move {
                admin.change_reservation(c).await
            })
            .await
            .map_err(|s| {
                let verb = match *op {
                    "create" => "creating",
                    "update" => "updating",
                    _ => "deleting",
                };
                anyhow::anyhow!("Error {verb} the reservation: {}", status_text(&s))
            })?
            .into_inner();
            if *op == "create" {
                println!("Reservation created: {}", done.name);
            }
            Ok(0)
        }
        ["show", "reservation" | "reservations" | "res"]
        | ["show", "licenses" | "license" | "lic"] => {
            use berth_proto::v1::admin_service_client::AdminServiceClient;
            let info = AdminServiceClient::new(channel)
                .get_cluster(pb::ClusterRequest {})
                .await
                .map_err(|s| anyhow::anyhow!("{}", status_text(&s)))?
                .into_inner();
            let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
            if words[1].starts_with("res") {
                print!(
                    "{}",
                    crate::reservation::show_reservations(&info.reservations, now_ms)
                );
            } else {
                print!("{}", crate::reservation::show_licenses(&info.licenses));
            }
            Ok(0)
        }
        // Slurm rereads slurm.conf; berth reads the description file named by
        // BERTH_CLUSTER_CONFIG (default /etc/berth/berth.toml) and installs it through the log.
        ["reconfigure"] | ["reconfig"] => {
            use berth_proto::v1::admin_service_client::AdminServiceClient;
            let file = std::env::var("BERTH_CLUSTER_CONFIG")
                .unwrap_or_else(|_| "/etc/berth/berth.toml".to_string());
            cluster_config_set(&mut AdminServiceClient::new(channel), &file).await
        }
        ["update", rest @ ..] if job_update::is_job_update(rest) => {
            let u = job_update::parse_job_update(rest).map_err(anyhow::Error::msg)?;
            let jobs = client::jobs(channel);
            let req = pb::UpdateArrayRequest {
                job_id: u.job.job_id,
                array_tasks: u.job.task_ranges(),
                max_running: u.max_running,
                time_limit_secs: u.time_limit_secs,
            };
            client::retried(&jobs, req, |mut jobs, req| async move {
                jobs.update_array(req).await
            })
            .await
            .map_err(|s| anyhow::anyhow!("Job {}: {}", u.job, status_text(&s)))?;
            Ok(0)
        }
        ["update", rest @ ..] => {
            use berth_proto::v1::admin_service_client::AdminServiceClient;
            use node_update::NodeUpdate;
            let r = match node_update::parse_node_update(rest).map_err(anyhow::Error::msg)? {
                NodeUpdate::GpuResume(r) => r,
                NodeUpdate::Drain {
                    nodes,
                    drain,
                    reason,
                } => {
                    let admin = AdminServiceClient::new(channel);
                    for node in nodes {
                        let req = pb::NodeDrain {
                            node,
                            drain,
                            reason: reason.clone(),
                            user: String::new(),
                        };
                        client::retried(&admin, req, |mut admin, req| async move {
                            admin.drain_node(req).await
                        })
                        .await
                        .map_err(|s| anyhow::anyhow!("slurm_update error: {}", status_text(&s)))?;
                    }
                    return Ok(0);
                }
            };
            let done = AdminServiceClient::new(channel)
                .resume_gpu(pb::GpuHealthyRequest {
                    node: r.node.clone(),
                    gpu: r.gpu,
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", status_text(&s)))?
                .into_inner();
            if done.cleared_reason.is_empty() {
                println!("GPU {} on {} was already healthy", done.gpu_uuid, r.node);
            } else {
                println!(
                    "GPU {} on {} resumed (was: {})",
                    done.gpu_uuid, r.node, done.cleared_reason
                );
            }
            Ok(0)
        }
        [] => {
            anyhow::bail!(
                "no command given (show job|show node|show partition|show topology|hold|release|update)"
            )
        }
        other => anyhow::bail!(
            "invalid or unsupported scontrol command: {}",
            other.join(" ")
        ),
    }
}

/// Reads the cluster description `file` and installs it through the Raft log; berthd
/// checks it first and answers a bad one with its line and reason (nothing changes).
pub(crate) async fn cluster_config_set(
    c: &mut berth_proto::v1::admin_service_client::AdminServiceClient<
        berth_auth::channel::AuthChannel,
    >,
    file: &str,
) -> anyhow::Result<i32> {
    let toml = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read the cluster description {file}: {e}"))?;
    c.set_cluster(pb::ClusterConfig { toml })
        .await
        .map_err(|s| anyhow::anyhow!("{file}: {}", status_text(&s)))?;
    println!("cluster description installed from {file}");
    Ok(0)
}

/// Every node berthd knows.
async fn list_nodes(channel: berth_auth::channel::AuthChannel) -> anyhow::Result<Vec<pb::Node>> {
    Ok(client::nodes(channel)
        .list(pb::ListNodesRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", status_text(&s)))?
        .into_inner()
        .nodes)
}
