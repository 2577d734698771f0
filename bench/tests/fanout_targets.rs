//! `bc-load fanout` against the relay and the Socket.IO server (on the machine's Redis,
//! through its adapter), at a small scale: both are reached, every expected delivery
//! arrives, a Socket.IO customer never gets a note, appends are acknowledged, the ratio
//! between the two is computed from their rounds, and the line says what a commit cost
//! the disk.
//!
//! It needs `node`, the Socket.IO server's packages (`npm ci` in `bench/socketio`, which
//! `scripts/test` runs first) and Redis on 127.0.0.1:6379; without them it fails.

use std::process::Command;

use serde_json::Value;

#[test]
fn fanout_measures_the_relay_and_socket_io_side_by_side() {
    let output = Command::new(env!("CARGO_BIN_EXE_bc-load"))
        .args([
            "fanout",
            "--targets",
            "relay,socketio",
            "--relay-bin",
            env!("CARGO_BIN_EXE_bc-relay"),
            "--rooms",
            "4",
            "--agents",
            "3",
            "--customers",
            "1",
            "--rate",
            "1000",
            "--rounds",
            "2",
            "--warmup-s",
            "1",
            "--duration-s",
            "2",
            "--history",
            "0",
            "--no-search",
            "--no-pin",
        ])
        .output()
        .expect("bc-load runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bc-load failed:\n{stderr}");
    let line: Value = serde_json::from_slice(&output.stdout).expect("one JSON line");

    for target in ["relay", "socketio"] {
        let fixed = &line[target]["fixed"];
        assert_eq!(fixed["lost"], 0, "{target} lost deliveries:\n{stderr}");
        assert_eq!(fixed["new_closes"], 0, "{target} closed sockets:\n{stderr}");
        let offered = fixed["offered_deliveries_per_s"].as_f64().unwrap_or(0.0);
        let delivered = fixed["deliveries_per_s"].as_f64().unwrap_or(0.0);
        assert!(
            delivered > 0.8 * offered,
            "{target} delivered {delivered}/s of {offered}/s offered"
        );
        assert!(
            fixed["server_cpu_us_per_delivery"].as_f64().unwrap_or(0.0) > 0.0,
            "{target}'s CPU was read"
        );
        let correctness = &line[target]["correctness"];
        assert_eq!(correctness["leaks"], 0, "{target}: {correctness}");
        assert_eq!(correctness["errors"], 0, "{target}: {correctness}");
    }
    // Socket.IO's shape is Backchannel's: a note reaches the room's 3 agents, a message
    // them and the customer (4); half of the sends are notes.
    let socketio = &line["socketio"]["fixed"];
    assert_eq!(
        line["socketio"]["fixed_rounds"][0]["offered_deliveries_per_s"], 1000.0,
        "{socketio}"
    );
    assert!(
        socketio["acks_per_s"].as_f64().unwrap_or(0.0) > 0.0,
        "Socket.IO acknowledges each append: {socketio}"
    );
    let rounds = line["socketio_ratio_to_relay"]["cpu_us_per_delivery_fixed_rounds"]
        .as_array()
        .map(Vec::len);
    assert_eq!(rounds, Some(2), "a ratio per round: {line}");
    assert!(
        line["ratio_to_socketio"].is_null(),
        "Backchannel did not run"
    );
    // Each target's busiest round is reported; at 1,000 deliveries/s neither server is
    // near its core's limit.
    for target in ["relay", "socketio"] {
        let most = line["fixed_load"]["server_cpu_util_max"][target].as_f64();
        assert!(
            most.is_some_and(|most| most > 0.0 && most < 0.85),
            "{target}'s busiest round: {}",
            line["fixed_load"]
        );
    }
    assert_eq!(line["fixed_load"]["saturated"], serde_json::json!([]));
    // The line names its machine's disk by what a commit cost it before the run.
    let disk = &line["machine"]["disk_commit"];
    assert_eq!(disk["commits"], 500, "the disk probe ran: {disk}");
    assert_eq!(disk["bytes"], 2048, "{disk}");
    assert!(
        disk["cpu_us"].as_f64().is_some_and(|cpu| cpu > 0.0)
            && disk["wall_p50_us"].as_f64() <= disk["wall_p99_us"].as_f64(),
        "{disk}"
    );
}
