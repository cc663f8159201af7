//! `deploy/` cannot be exercised here (no Docker daemon, no cluster), so its files are checked
//! for what would break a deploy: the Dockerfile's stages and runtime hygiene, the Kubernetes
//! manifest's wiring (probes, scrape annotations, Secret keys, config mount, env vars the config
//! actually reads, a config that loads), and dashboards and alerts that only name real metrics.
//! The compose example and the Redis the replicas share are checked in `deploy_state`.

use serde_yaml::Value as Yaml;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

mod deploy_state;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The metric families of DESIGN §1.8.
const FAMILIES: [&str; 17] = [
    "ai_gateway_requests_total",
    "ai_gateway_request_duration_seconds",
    "ai_gateway_time_to_first_token_seconds",
    "ai_gateway_overhead_seconds",
    "ai_gateway_tokens_total",
    "ai_gateway_upstream_attempts_total",
    "ai_gateway_fallbacks_total",
    "ai_gateway_circuit_state",
    "ai_gateway_inflight_requests",
    "ai_gateway_cache_lookups_total",
    "ai_gateway_cache_entries",
    "ai_gateway_cache_bytes",
    "ai_gateway_rate_limited_total",
    "ai_gateway_spend_usd_total",
    "ai_gateway_config_reloads_total",
    "ai_gateway_config_generation",
    // Issue 15: failed commands to the shared-state Redis, by operation.
    "ai_gateway_state_errors_total",
];

/// Every `ai_gateway_*` name in a PromQL text.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("ai_gateway_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        out.insert(name);
    }
    out
}

fn known(name: &str) -> bool {
    let base = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name);
    FAMILIES.contains(&base) || FAMILIES.contains(&name)
}

#[test]
fn dockerfile_builds_in_stages_and_runs_as_non_root_with_a_healthcheck() {
    let text = read("deploy/Dockerfile");
    // Join continuation lines into instructions.
    let joined = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    let instructions: Vec<(String, String)> = joined
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (op, args) = l.trim().split_once(' ').unwrap_or((l.trim(), ""));
            (op.to_ascii_uppercase(), args.trim().to_owned())
        })
        .collect();
    let known_ops = [
        "FROM",
        "RUN",
        "WORKDIR",
        "COPY",
        "ENV",
        "USER",
        "EXPOSE",
        "HEALTHCHECK",
        "STOPSIGNAL",
        "ENTRYPOINT",
        "CMD",
    ];
    for (op, _) in &instructions {
        assert!(known_ops.contains(&op.as_str()), "unknown instruction {op}");
    }
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (op, _))| op == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(stages.len(), 2, "a builder and a runtime stage");
    let (builder, runtime) = instructions.split_at(stages[1]);
    assert!(builder[0].1.ends_with("AS builder"));
    assert!(builder
        .iter()
        .any(|(op, a)| op == "RUN" && a.contains("install") && a.contains("cmake")));
    assert!(builder
        .iter()
        .any(|(op, a)| op == "RUN" && a.contains("cargo build --release --locked")));
    assert!(runtime
        .iter()
        .any(|(op, a)| op == "RUN" && a.contains("ca-certificates")));
    let user = runtime
        .iter()
        .rev()
        .find(|(op, _)| op == "USER")
        .map(|(_, a)| a.as_str());
    assert!(
        user.is_some_and(|u| !u.starts_with("root") && !u.starts_with("0")),
        "runs as {user:?}"
    );
    let health = runtime
        .iter()
        .find(|(op, _)| op == "HEALTHCHECK")
        .map(|(_, a)| a.clone())
        .unwrap_or_default();
    assert!(
        health.contains("--probe") && health.contains("/health"),
        "{health}"
    );
    assert!(runtime
        .iter()
        .any(|(op, a)| op == "COPY" && a.starts_with("--from=builder")));
    // Every file the build copies from the context exists.
    for (op, args) in &instructions {
        if op == "COPY" && !args.starts_with("--from") {
            let parts: Vec<&str> = args.split_whitespace().collect();
            for src in &parts[..parts.len() - 1] {
                assert!(root().join(src).exists(), "COPY source {src} is missing");
            }
        }
    }
}

fn docs(text: &str) -> Vec<Yaml> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn str_of(v: &Yaml) -> &str {
    v.as_str().unwrap_or_default()
}

#[test]
fn kubernetes_sidecar_manifest_is_wired_and_its_config_loads() {
    let all = docs(&read("deploy/kubernetes/sidecar.yaml"));
    let of = |kind: &str| {
        all.iter()
            .find(|d| str_of(&d["kind"]) == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let (cm, secret) = (of("ConfigMap"), of("Secret"));
    let deploy = all
        .iter()
        .find(|d| str_of(&d["kind"]) == "Deployment" && container(d, "ai-gateway").is_some())
        .expect("a Deployment with the ai-gateway sidecar");
    let pod = &deploy["spec"]["template"];
    let spec = &pod["spec"];
    let gateway = container(deploy, "ai-gateway").unwrap();
    assert!(
        spec["containers"]
            .as_sequence()
            .is_some_and(|c| c.iter().any(|c| str_of(&c["name"]) != "ai-gateway")),
        "an application container"
    );
    // A native sidecar keeps running for the app's whole life.
    if spec["initContainers"]
        .as_sequence()
        .is_some_and(|c| c.iter().any(|c| str_of(&c["name"]) == "ai-gateway"))
    {
        assert_eq!(str_of(&gateway["restartPolicy"]), "Always");
    }

    // Probes and scrape annotations point at the admin port.
    let admin_port = gateway["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| str_of(&p["name"]) == "admin")
        .expect("admin port")["containerPort"]
        .as_u64()
        .unwrap();
    assert_eq!(
        str_of(&gateway["livenessProbe"]["httpGet"]["path"]),
        "/health"
    );
    assert_eq!(
        str_of(&gateway["readinessProbe"]["httpGet"]["path"]),
        "/ready"
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(str_of(&gateway[probe]["httpGet"]["port"]), "admin");
    }
    let ann = &pod["metadata"]["annotations"];
    assert_eq!(str_of(&ann["prometheus.io/scrape"]), "true");
    assert_eq!(str_of(&ann["prometheus.io/port"]), admin_port.to_string());
    assert_eq!(str_of(&ann["prometheus.io/path"]), "/metrics");

    // The config is the ConfigMap, mounted as a folder (subPath would freeze it).
    let args: Vec<&str> = gateway["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    let config_path = Path::new(args[args.iter().position(|a| *a == "-c").unwrap() + 1]);
    let mount = gateway["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| Path::new(str_of(&m["mountPath"])) == config_path.parent().unwrap())
        .expect("config folder mounted");
    assert!(
        mount["subPath"].is_null(),
        "subPath mounts never see ConfigMap updates"
    );
    let volume = spec["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(volume["configMap"]["name"], cm["metadata"]["name"]);

    // Secret references resolve.
    let secret_keys: BTreeSet<&str> = secret["stringData"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(str_of)
        .collect();
    let env = gateway["env"].as_sequence().unwrap();
    for e in env {
        if let Some(r) = e["valueFrom"]["secretKeyRef"].as_mapping() {
            assert_eq!(r[&Yaml::from("name")], secret["metadata"]["name"]);
            assert!(
                secret_keys.contains(str_of(&r[&Yaml::from("key")])),
                "{e:?}"
            );
        }
    }

    // Every variable set on the sidecar is one the config reads, and the config loads with them.
    let file = config_path.file_name().unwrap().to_str().unwrap();
    let yaml = str_of(&cm["data"][file]);
    let used: BTreeSet<String> = yaml
        .split("${")
        .skip(1)
        .map(|s| {
            s.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect();
    let values = kube_env(env);
    for e in env {
        let name = str_of(&e["name"]);
        let passed_on = env
            .iter()
            .any(|o| str_of(&o["value"]).contains(&format!("$({name})")));
        assert!(
            used.contains(name) || passed_on,
            "{name} is set but {file} never reads it"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    for (k, v) in cm["data"].as_mapping().unwrap() {
        std::fs::write(dir.path().join(str_of(k)), str_of(v)).unwrap();
    }
    // The values the manifest sets replace `${NAME}` / `${NAME:-default}` as the gateway would.
    let mut text = yaml.to_owned();
    for e in env {
        if e["value"].is_string() {
            let name = str_of(&e["name"]);
            substitute(&mut text, name, &values[name]);
        }
    }
    let cfg = ai_gateway::config::Config::from_str_at(&text, &dir.path().join(file))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.listen.to_string(),
        "127.0.0.1:8080",
        "the API stays on the pod's loopback"
    );
    assert_eq!(cfg.admin_listen.port() as u64, admin_port);
    assert!(
        cfg.admin_listen.ip().is_unspecified(),
        "probes and scrapes reach the admin port from outside"
    );
    let grace = deploy["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        grace > cfg.grace_period.as_secs(),
        "the kubelet would kill the gateway mid-drain"
    );

    // The sidecars share their state through the Redis the manifest runs.
    let state = &docs(yaml)[0]["state"];
    assert_eq!(str_of(&state["backend"]), "redis");
    assert!(str_of(&state["url"]).starts_with("${REDIS_URL"));
    deploy_state::kubernetes_redis_is_wired(&all, secret, &values);
}

/// The container (or init container) named `name` of a Deployment's pod.
fn container<'a>(deploy: &'a Yaml, name: &str) -> Option<&'a Yaml> {
    let spec = &deploy["spec"]["template"]["spec"];
    spec["initContainers"]
        .as_sequence()
        .into_iter()
        .flatten()
        .chain(spec["containers"].as_sequence().into_iter().flatten())
        .find(|c| str_of(&c["name"]) == name)
}

/// Each variable's value as the container sees it: `$(NAME)` expanded from the variables before
/// it, as the kubelet does; a Secret's value is a placeholder naming its key.
fn kube_env(env: &[Yaml]) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::<String, String>::new();
    for e in env {
        let value = match e["valueFrom"]["secretKeyRef"]["key"].as_str() {
            Some(key) => format!("secret-{key}"),
            None => {
                let mut v = str_of(&e["value"]).to_owned();
                for (name, earlier) in &out {
                    v = v.replace(&format!("$({name})"), earlier);
                }
                v
            }
        };
        out.insert(str_of(&e["name"]).to_owned(), value);
    }
    out
}

/// Replaces `${NAME}` / `${NAME:-default}` with `value`, as the gateway expands its config.
fn substitute(text: &mut String, name: &str, value: &str) {
    let open = format!("${{{name}");
    let mut from = 0;
    while let Some(i) = text[from..].find(&open).map(|i| i + from) {
        let rest = &text[i + open.len()..];
        // `${NAME}` or `${NAME:-…}`, not `${NAMEX}`.
        if !(rest.starts_with('}') || rest.starts_with(":-")) {
            from = i + open.len();
            continue;
        }
        let end = i + text[i..].find('}').unwrap();
        text.replace_range(i..=end, value);
        from = i + value.len();
    }
}

#[test]
fn alerts_and_dashboard_use_only_real_metrics_and_cover_the_essentials() {
    let alerts = docs(&read("deploy/prometheus/alerts.yml")).remove(0);
    let mut alert_names = Vec::new();
    for rule in alerts["groups"][0]["rules"].as_sequence().unwrap() {
        alert_names.push(str_of(&rule["alert"]).to_owned());
        for m in metric_names(str_of(&rule["expr"])) {
            assert!(
                known(&m),
                "alert {} uses unknown metric {m}",
                str_of(&rule["alert"])
            );
        }
    }
    for want in [
        "AiGatewayBreakerOpen",
        "AiGatewayHighErrorRatio",
        "AiGatewayConfigReloadFailed",
        "AiGatewaySharedStateDegraded",
    ] {
        assert!(alert_names.iter().any(|a| a == want), "{want} missing");
    }
    let prom = docs(&read("deploy/prometheus/prometheus.yml")).remove(0);
    assert!(prom["rule_files"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|f| str_of(f) == "alerts.yml"));
    assert!(prom["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|s| s["kubernetes_sd_configs"].is_sequence()));

    let dash: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/ai-gateway.json")).unwrap();
    let mut used = BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            for m in metric_names(t["expr"].as_str().unwrap()) {
                assert!(known(&m), "panel {} uses unknown metric {m}", p["title"]);
                used.insert(m);
            }
        }
    }
    for essential in [
        "ai_gateway_requests_total",
        "ai_gateway_request_duration_seconds_bucket",
        "ai_gateway_time_to_first_token_seconds_bucket",
        "ai_gateway_tokens_total",
        "ai_gateway_cache_lookups_total",
        "ai_gateway_circuit_state",
        "ai_gateway_config_reloads_total",
    ] {
        assert!(
            used.contains(essential),
            "the dashboard does not chart {essential}"
        );
    }
}

#[test]
fn readme_and_operations_guide_document_docker_and_kubectl() {
    let readme = read("README.md");
    assert!(readme.contains("docker build -f deploy/Dockerfile"));
    assert!(readme.contains("kubectl apply -f deploy/kubernetes/sidecar.yaml"));
    let deploy = read("deploy/README.md");
    assert!(deploy.contains("docker compose -f deploy/docker-compose.yaml up"));
    let ops = read("docs/operations.md");
    for topic in [
        "docker build",
        "kubectl apply",
        "/admin/reload",
        "SIGHUP",
        "SIGTERM",
        "alerts.yml",
        "ai-gateway.json",
    ] {
        assert!(
            ops.contains(topic),
            "docs/operations.md does not cover {topic}"
        );
    }
}
