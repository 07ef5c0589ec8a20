//! `mesaya-dev --driven`: the dev stack for a test written in another language (the client
//! library's end-to-end and browser tests, with Node's test runner). No simulator ticks by
//! itself; the test sends one JSON command per line on stdin and reads one JSON answer per line
//! on stdout (the first line, unasked, says where everything listens). Stdin closed: everything
//! stops.
//!
//! Commands (`{"do": …}`) and their answers:
//! - `token` `{roles, expiresIn}` → `{token}`: a JWT the gateway accepts, `expiresIn` seconds long;
//! - `simulate` `{count}` → `{emitted}`: that many simulator events (both sections);
//! - `table_status` `{table, status}`, `table_moved` `{table, section, x, y}`,
//!   `reservation_created` `{table, guests, time}`, `object_moved` `{object, x, y}`,
//!   `section_renamed` `{section, name}`, `section_deleted` `{section}` → `{emitted: 1, what}`;
//! - `tables_created` `{section, count, notes}` → `{emitted}`: a bulk import of that many new
//!   tables (numbered from 100, piled on the floor: a load, not a layout), each with `notes` bytes
//!   of notes; `imports_deleted` `{section}` → `{emitted}`: every such table deleted;
//! - `watched` `{section}` → what a client watching it should hold once caught up
//!   (`section`, `tables`, `objects` with their `object`, live `reservations`);
//! - `reservations` → `{reservations}`: the latest version of every reservation emitted;
//! - `restart` → `{restarted: true}`: SIGTERM, wait for the exit, a new gateway ready;
//! - `api_calls` `{section}` → `{calls}`: snapshot requests the stand-in API answered for it.
//!
//! A command that cannot be done answers `{error}` and the stack goes on.

use std::collections::BTreeMap;

use mesaya_testkit::sample::{Event, RESERVATIONS_TOPIC};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::stack::{self, Stack};

pub async fn serve(mut stack: Stack, seed: u64) {
    let sections: Vec<Value> =
        stack.simulator.floor().sections().into_iter().map(|(id, name)| json!({"id": id, "name": name})).collect();
    answer(&json!({
        "ready": true,
        "gateway": stack.gateway.ws_url(""),
        "admin": stack.gateway.ops_url(),
        "page": stack.page.url(),
        "sections": sections,
        "seed": seed,
    }));
    let mut reservations = BTreeMap::new();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let reply = match serde_json::from_str::<Value>(&line) {
            Ok(command) => {
                run(&mut stack, &mut reservations, &command).await.unwrap_or_else(|error| json!({"error": error}))
            }
            Err(error) => json!({"error": format!("not a JSON command: {error}")}),
        };
        answer(&reply);
    }
    let _ = stack.stop_gateway().await;
}

/// Imported tables are numbered from here; the sample's own stay below.
const IMPORTED_FROM: u64 = 100;

/// Latest version of each reservation emitted, by id: what a client may hold of it.
type Reservations = BTreeMap<String, Value>;

async fn run(stack: &mut Stack, reservations: &mut Reservations, command: &Value) -> Result<Value, String> {
    let text = |name: &str| command[name].as_str().ok_or(format!("`{name}` (a string) is missing"));
    let number = |name: &str| command[name].as_i64().ok_or(format!("`{name}` (a number) is missing"));
    let floor = stack.simulator.floor();
    let scripted = match text("do")? {
        "token" => {
            let roles: Vec<&str> =
                command["roles"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            let lifetime = u64::try_from(number("expiresIn")?).map_err(|_| "`expiresIn` must be positive")?;
            return Ok(json!({"token": stack::token(&roles, std::time::Duration::from_secs(lifetime))}));
        }
        "simulate" => {
            let count = number("count")?;
            for _ in 0..count {
                let event = stack.simulate().await;
                remember(reservations, &event);
            }
            return Ok(json!({"emitted": count}));
        }
        "tables_created" => {
            let (section, count) = (text("section")?, number("count")?);
            let notes = usize::try_from(command["notes"].as_u64().unwrap_or(0)).unwrap_or(0);
            let first = IMPORTED_FROM + floor.tables_of(section).len() as u64;
            let events: Vec<Event> =
                (0..count as u64).map(|i| floor.table_created(section, first + i, (2, 2), notes)).collect();
            stack.emit_all(&events).await;
            return Ok(json!({"emitted": count}));
        }
        "imports_deleted" => {
            let events: Vec<Event> = floor
                .tables_of(text("section")?)
                .into_iter()
                .filter(|table| table["number"].as_u64() >= Some(IMPORTED_FROM))
                .map(|table| floor.table_deleted(table["id"].as_str().unwrap_or_default()))
                .collect();
            stack.emit_all(&events).await;
            return Ok(json!({"emitted": events.len()}));
        }
        "watched" => return floor.watched(text("section")?).ok_or("no such section".to_string()),
        "reservations" => return Ok(json!({"reservations": reservations.values().collect::<Vec<_>>()})),
        "restart" => {
            stack.restart_gateway().await?;
            return Ok(json!({"restarted": true}));
        }
        "api_calls" => return Ok(json!({"calls": stack.api.call_count(text("section")?)})),
        "table_status" => floor.table_status(text("table")?, text("status")?),
        "table_moved" => floor.table_moved(text("table")?, text("section")?, (number("x")?, number("y")?)),
        "reservation_created" => {
            let guests = u32::try_from(number("guests")?).map_err(|_| "`guests` out of range")?;
            floor.reservation_created(text("table")?, guests, text("time")?)
        }
        "object_moved" => floor.object_moved(text("object")?, (number("x")?, number("y")?)),
        "section_renamed" => floor.section_renamed(text("section")?, text("name")?),
        "section_deleted" => floor.section_deleted(text("section")?),
        other => return Err(format!("unknown command {other:?}")),
    };
    stack.emit(&scripted).await;
    remember(reservations, &scripted);
    Ok(json!({"emitted": 1, "what": scripted.what}))
}

fn remember(reservations: &mut Reservations, event: &Event) {
    if event.topic == RESERVATIONS_TOPIC {
        let data = &event.envelope["data"];
        if let Some(id) = data["id"].as_str() {
            reservations.insert(id.to_string(), data.clone());
        }
    }
}

fn answer(reply: &Value) {
    println!("{reply}");
}
