#![allow(clippy::unwrap_used)]

use super::*;
use std::time::Duration;

fn names() -> Names {
    Names::new(
        "public.outbox_event".parse().unwrap(),
        "dispatchbox".parse().unwrap(),
    )
    .unwrap()
}

fn healthy() -> ServerFacts {
    let columns = EVENT_COLUMNS
        .iter()
        .chain(STATUS_COLUMNS)
        .map(|c| {
            let ty = match *c {
                "id" => "bigint",
                "payload" => "jsonb",
                "attempts" => "integer",
                "created_at" | "next_run_at" | "last_error_at" => "timestamp with time zone",
                "delivered_at" => "timestamp(3) with time zone",
                "aggregate_id" => "character varying(64)",
                _ => "text",
            };
            (c.to_string(), ty.to_string())
        })
        .collect();
    ServerFacts {
        server_version_num: 150_004,
        server_version: "15.4".into(),
        wal_level: "logical".into(),
        max_slot_wal_keep_size: Some("1024".into()),
        role: "relay".into(),
        superuser: false,
        replication: true,
        database: "app".into(),
        tls: false,
        server_address: Some("127.0.0.1".into()),
        columns: Some(columns),
        nullable: vec!["headers".into(), "last_error".into()],
        publication: Some(PublicationFacts {
            insert: true,
            update: false,
            delete: false,
            truncate: false,
            contains_table: true,
        }),
    }
}

#[test]
fn healthy_server_has_no_problems() {
    assert!(healthy().problems(&names()).is_empty());
    assert!(healthy().warnings(&names()).is_empty());
}

#[test]
fn each_problem_is_reported_with_its_fix() {
    let mut facts = healthy();
    facts.server_version_num = 140_009;
    facts.server_version = "14.9".into();
    facts.wal_level = "replica".into();
    facts.replication = false;
    facts.publication = Some(PublicationFacts {
        insert: true,
        update: true,
        delete: false,
        truncate: true,
        contains_table: false,
    });
    let text: Vec<String> = facts
        .problems(&names())
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(text.len(), 5, "{text:#?}");
    assert!(text[0].contains("14.9"));
    assert!(text[1].contains("ALTER SYSTEM SET wal_level = logical"));
    assert!(text[2].contains("ALTER ROLE \"relay\" REPLICATION"));
    assert!(text[3].contains("ADD TABLE public.outbox_event"));
    assert!(text[4].contains("publishes insert, update, truncate"));
    assert!(text[4].contains("SET (publish = 'insert')"));
}

#[test]
fn payload_must_be_json() {
    let mut facts = healthy();
    if let Some(columns) = facts.columns.as_mut() {
        for (name, ty) in columns.iter_mut() {
            if name == "payload" {
                *ty = "text".into();
            }
        }
        columns.retain(|(name, _)| name != "delivered_at");
    }
    let problems = facts.problems(&names());
    assert!(matches!(
        problems.as_slice(),
        [
            CheckError::MissingStatusColumn {
                column: "delivered_at",
                ..
            },
            CheckError::WrongColumnType {
                column: "payload",
                ..
            }
        ]
    ));
}

#[test]
fn unlimited_slot_wal_is_a_warning() {
    let mut facts = healthy();
    facts.max_slot_wal_keep_size = Some("-1".into());
    assert_eq!(
        facts.warnings(&names()),
        vec![CheckWarning::UnlimitedSlotWal]
    );
}

fn slot(wal_status: SlotWalStatus) -> SlotStatus {
    SlotStatus {
        name: "dispatchbox".into(),
        exists: true,
        slot_type: Some("logical".into()),
        plugin: Some("pgoutput".into()),
        temporary: false,
        two_phase: false,
        database: Some("app".into()),
        active: false,
        active_pid: None,
        client_application_name: None,
        client_addr: None,
        client_state: None,
        confirmed_flush_lsn: Some("0/16B3748".into()),
        restart_lsn: Some("0/16B3710".into()),
        lag_bytes: Some(2048),
        wal_status: Some(wal_status),
        safe_wal_size: Some(1 << 30),
        invalidation_reason: None,
    }
}

fn severities(findings: &[Finding], check: &str) -> Vec<Severity> {
    findings
        .iter()
        .filter(|f| f.check == check)
        .map(|f| f.severity)
        .collect()
}

#[test]
fn every_check_reports_a_finding_when_healthy() {
    let findings = healthy().findings(&names(), &slot(SlotWalStatus::Reserved));
    let checks: Vec<&str> = findings.iter().map(|f| f.check.as_str()).collect();
    assert_eq!(
        checks,
        [
            "server_version",
            "wal_level",
            "replication_privilege",
            "table",
            "publication",
            "max_slot_wal_keep_size",
            "slot"
        ]
    );
    assert!(findings
        .iter()
        .all(|f| f.severity == Severity::Ok && f.fix.is_none()));
    assert!(
        findings[6].message.contains("2.0 KiB behind"),
        "{findings:#?}"
    );
}

#[test]
fn slot_states_are_judged() {
    let facts = healthy();
    let judge = |slot: SlotStatus| facts.findings(&names(), &slot);

    let lost = judge(slot(SlotWalStatus::Lost));
    assert_eq!(severities(&lost, "slot"), [Severity::Error]);
    let fix = lost
        .iter()
        .find(|f| f.check == "slot")
        .and_then(|f| f.fix.clone());
    assert!(fix.is_some_and(|f| f.contains("recreates the slot") && f.contains("sweeper")));

    for status in [SlotWalStatus::Extended, SlotWalStatus::Unreserved] {
        assert_eq!(
            severities(&judge(slot(status)), "slot"),
            [Severity::Warning],
            "{status:?}"
        );
    }

    let mut missing = slot(SlotWalStatus::Reserved);
    missing.exists = false;
    assert_eq!(severities(&judge(missing), "slot"), [Severity::Warning]);

    let mut physical = slot(SlotWalStatus::Reserved);
    physical.slot_type = Some("physical".into());
    physical.plugin = None;
    physical.database = None;
    let findings = judge(physical);
    assert_eq!(severities(&findings, "slot"), [Severity::Error]);
    assert!(findings.iter().any(|f| f.message.contains("physical slot")));

    // Another database's slot: one error (its WAL status is not the relay's concern).
    let mut elsewhere = slot(SlotWalStatus::Lost);
    elsewhere.database = Some("other".into());
    let findings = judge(elsewhere);
    assert_eq!(
        severities(&findings, "slot"),
        [Severity::Error],
        "{findings:#?}"
    );
    assert!(findings
        .iter()
        .any(|f| f.message.contains("logical slot of database \"other\"")));
}

/// Only a logical pgoutput slot of the configured database, not temporary and without
/// two-phase decoding, is the relay's; anything else is refused with the slot named,
/// what it is, and both ways out.
#[test]
fn only_the_relays_own_slot_is_used() {
    let judge_slot = |s: &SlotStatus, db: &str| slot::judge(s, db).map_err(CheckError::SlotNotOurs);
    let ours = slot(SlotWalStatus::Reserved);
    assert_eq!(judge_slot(&ours, "app").unwrap(), SlotUse::Usable);
    let mut missing = ours.clone();
    missing.exists = false;
    assert_eq!(judge_slot(&missing, "app").unwrap(), SlotUse::Missing);
    assert_eq!(
        judge_slot(&slot(SlotWalStatus::Lost), "app").unwrap(),
        SlotUse::Invalidated
    );
    // PostgreSQL 17+ names the reason even when wal_status is not lost.
    let mut conflicting = ours.clone();
    conflicting.invalidation_reason = Some("rows_removed".into());
    assert_eq!(
        judge_slot(&conflicting, "app").unwrap(),
        SlotUse::Invalidated
    );

    let refused = |change: &dyn Fn(&mut SlotStatus), what: &str| {
        let mut other = ours.clone();
        change(&mut other);
        let error = judge_slot(&other, "app").unwrap_err();
        let text = error.to_string();
        assert!(text.contains(what), "{what}: {text}");
        assert!(text.contains("replication slot \"dispatchbox\""), "{text}");
        assert!(text.contains("set DISPATCHBOX_SLOT"), "{text}");
        assert!(
            text.contains("SELECT pg_drop_replication_slot('dispatchbox')"),
            "{text}"
        );
        assert_eq!(error.check(), "slot");
        assert!(!error.is_transient());
        text
    };
    let text = refused(
        &|s| s.database = Some("billing".into()),
        "logical slot of database \"billing\" with output plugin \"pgoutput\"",
    );
    assert!(
        text.contains("while connected to database \"billing\""),
        "{text}"
    );
    refused(
        &|s| s.plugin = Some("test_decoding".into()),
        "output plugin \"test_decoding\"",
    );
    let text = refused(
        &|s| {
            s.slot_type = Some("physical".into());
            s.plugin = None;
            s.database = None;
        },
        "a physical slot",
    );
    assert!(!text.contains("while connected"), "{text}");
    refused(&|s| s.temporary = true, "a temporary logical slot");
    refused(&|s| s.two_phase = true, "two-phase decoding");
    // Even an invalidated slot of another database is left alone.
    refused(
        &|s| {
            s.database = Some("billing".into());
            s.wal_status = Some(SlotWalStatus::Lost);
        },
        "database \"billing\"",
    );
}

#[test]
fn nullable_contract_columns_are_a_warning_with_the_fix() {
    let mut facts = healthy();
    facts.nullable = vec!["headers".into(), "event_type".into(), "created_at".into()];
    let warnings = facts.warnings(&names());
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(
        warnings[0].problem(),
        "outbox table public.outbox_event allows NULL in \"event_type\" and \"created_at\": \
         the relay needs a value there, and a row without one becomes dead instead of being \
         delivered"
    );
    assert!(warnings[0].fix().ends_with(
        "ALTER TABLE public.outbox_event ALTER COLUMN \"event_type\" SET NOT NULL, \
         ALTER COLUMN \"created_at\" SET NOT NULL"
    ));
}

#[test]
fn an_unencrypted_connection_to_another_host_is_a_warning() {
    let mut facts = healthy();
    for local in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
        facts.server_address = Some(local.into());
        assert!(facts.warnings(&names()).is_empty(), "{local}");
    }
    facts.server_address = None;
    assert!(facts.warnings(&names()).is_empty(), "a Unix socket");
    facts.server_address = Some("10.1.2.3".into());
    let warnings = facts.warnings(&names());
    assert_eq!(
        warnings,
        vec![CheckWarning::NoTls {
            address: "10.1.2.3".into()
        }]
    );
    assert!(warnings[0].fix().contains("sslmode=verify-full"));
    facts.tls = true;
    assert!(facts.warnings(&names()).is_empty(), "encrypted");
}

#[test]
fn narrow_text_columns_are_found_with_the_statement_that_widens_them() {
    let mut facts = healthy();
    if let Some(columns) = facts.columns.as_mut() {
        for (name, ty) in columns.iter_mut() {
            match name.as_str() {
                "status" => *ty = "character varying(7)".into(),
                "claim_token" => *ty = "character varying(255)".into(),
                "last_error" => *ty = "character varying(255)".into(),
                _ => {}
            }
        }
    }
    let problems = facts.problems(&names());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].problem().contains("\"status\""),
        "{}",
        problems[0]
    );
    assert!(
        problems[0].problem().contains("at least 10"),
        "{}",
        problems[0]
    );
    assert_eq!(
        problems[0].fix().unwrap(),
        "run ALTER TABLE public.outbox_event ALTER COLUMN \"status\" TYPE text"
    );
    let warnings = facts.warnings(&names());
    assert_eq!(
        warnings,
        vec![CheckWarning::ErrorColumnNarrow {
            table: "public.outbox_event".into(),
            width: 255
        }]
    );
    assert!(warnings[0]
        .fix()
        .contains("ALTER COLUMN \"last_error\" TYPE text"));
    assert_eq!(facts.text_widths().last_error, Some(255));
}

#[test]
fn problems_and_findings_agree() {
    let mut facts = healthy();
    facts.wal_level = "minimal".into();
    facts.publication = None;
    let problems = facts.problems(&names());
    let findings = facts.findings(&names(), &slot(SlotWalStatus::Reserved));
    let errors: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .collect();
    assert_eq!(problems.len(), errors.len());
    for (problem, finding) in problems.iter().zip(errors) {
        assert_eq!(problem.problem(), finding.message);
        assert_eq!(problem.fix(), finding.fix);
        assert_eq!(
            problem.to_string(),
            format!(
                "{}; {}",
                finding.message,
                finding.fix.clone().unwrap_or_default()
            )
        );
    }
}

#[test]
fn column_types_ignore_type_modifiers() {
    assert_eq!(
        without_typmod("character varying(255)"),
        "character varying"
    );
    assert_eq!(
        without_typmod("timestamp(3) with time zone"),
        "timestamp with time zone"
    );
    let mut facts = healthy();
    if let Some(columns) = facts.columns.as_mut() {
        for (name, ty) in columns.iter_mut() {
            if name == "created_at" {
                *ty = "timestamp without time zone".into();
            }
        }
    }
    let problems = facts.problems(&names());
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0]
        .to_string()
        .contains("ALTER COLUMN \"created_at\" TYPE timestamptz"));
}

#[test]
fn connection_hints_follow_the_cause() {
    let err = CheckError::ConnectTimeout {
        target: "postgres://relay:***@db:5432/app".into(),
        timeout: Duration::from_secs(10),
    };
    assert!(err.problem().contains("did not answer within 10s"));
    assert!(err.is_transient());
    assert_eq!(Finding::from(&err).check, "connection");
}
