//! The shared-state part of `deploy/`: the compose example (two gateway replicas on one Valkey)
//! and the Kubernetes example's Valkey, checked for the wiring a deploy depends on: the URL the
//! sidecars get leads to the server, both ends agree on the password, state is persisted, and
//! the configs load.

use super::{docs, read, root, str_of, substitute, Yaml};
use std::collections::{BTreeMap, BTreeSet};

/// `host:port` and password of a `redis://[:password@]host:port/db` URL.
fn redis_endpoint(url: &str) -> (String, u64, Option<String>) {
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
        .unwrap_or_else(|| panic!("{url} is not a redis:// URL"));
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((a, r)) => (Some(a), r),
        None => (None, rest),
    };
    let hostport = rest.split('/').next().unwrap();
    let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "6379"));
    let password = auth
        .and_then(|a| a.split_once(':'))
        .map(|(_, p)| p.to_owned());
    (host.to_owned(), port.parse().unwrap(), password)
}

/// Bytes of a Kubernetes quantity (`384Mi`, `400M`) or a Redis size (`200mb` is 200 × 2^20 and
/// `200m` 200 × 10^6, as redis.conf reads them).
fn bytes_of(size: &str) -> u64 {
    let size = size.to_ascii_lowercase();
    let digits = size.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = match &size[digits.len()..] {
        "" | "b" => 1,
        "k" => 1_000,
        "ki" | "kb" => 1 << 10,
        "m" => 1_000_000,
        "mi" | "mb" => 1 << 20,
        "g" => 1_000_000_000,
        "gi" | "gb" => 1 << 30,
        other => panic!("unknown size unit {other}"),
    };
    digits.parse::<u64>().unwrap() * unit
}

/// The Service in REDIS_URL exists and leads to a Valkey/Redis Deployment that asks for the same
/// password, persists to a claimed volume, and keeps its memory under the container's limit.
pub fn kubernetes_redis_is_wired(all: &[Yaml], secret: &Yaml, values: &BTreeMap<String, String>) {
    let named = |kind: &str, name: &str| {
        all.iter()
            .find(|d| str_of(&d["kind"]) == kind && str_of(&d["metadata"]["name"]) == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let url = values.get("REDIS_URL").expect("the sidecar gets REDIS_URL");
    let (host, port, password) = redis_endpoint(url);
    let service = named("Service", &host);
    let service_port = service["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["port"].as_u64() == Some(port))
        .unwrap_or_else(|| panic!("Service {host} has no port {port}"));
    let selector = service["spec"]["selector"].as_mapping().unwrap();
    let redis = all
        .iter()
        .find(|d| {
            str_of(&d["kind"]) == "Deployment"
                && selector
                    .iter()
                    .all(|(k, v)| &d["spec"]["template"]["metadata"]["labels"][k] == v)
        })
        .expect("a Deployment behind the Redis Service");
    let pod = &redis["spec"]["template"]["spec"];
    let server = &pod["containers"][0];
    let image = str_of(&server["image"]);
    assert!(
        image.starts_with("valkey/valkey:") || image.starts_with("redis:"),
        "{image}"
    );
    let target = &service_port["targetPort"];
    assert!(
        server["ports"].as_sequence().unwrap().iter().any(|p| {
            (target.is_string() && p["name"] == *target)
                || (target.is_u64() && p["containerPort"] == *target)
        }),
        "the Service's targetPort is no port of the Redis container"
    );

    // One password: the server's requirepass and the sidecar's URL come from the same Secret key.
    let args: Vec<&str> = server["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    let arg = |flag: &str| {
        args[args
            .iter()
            .position(|a| *a == flag)
            .unwrap_or_else(|| panic!("no {flag}"))
            + 1]
    };
    let requirepass = arg("--requirepass");
    let var = requirepass
        .strip_prefix("$(")
        .and_then(|v| v.strip_suffix(')'))
        .expect("the password comes from a variable");
    let key_of = |env: &[Yaml], var: &str| {
        let e = env
            .iter()
            .find(|e| str_of(&e["name"]) == var)
            .unwrap_or_else(|| panic!("{var} not set"));
        assert_eq!(
            e["valueFrom"]["secretKeyRef"]["name"],
            secret["metadata"]["name"]
        );
        str_of(&e["valueFrom"]["secretKeyRef"]["key"]).to_owned()
    };
    let server_key = key_of(server["env"].as_sequence().unwrap(), var);
    assert_eq!(
        password.as_deref(),
        Some(format!("secret-{server_key}").as_str()),
        "REDIS_URL must carry the password Redis requires ({server_key})"
    );
    assert!(secret["stringData"][server_key.as_str()].is_string());

    // Spend and budgets live here: persisted on a claimed volume, one writer at a time.
    assert_eq!(arg("--appendonly"), "yes");
    let data = server["volumeMounts"][0]["name"].clone();
    let claim = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == data)
        .expect("the data volume")["persistentVolumeClaim"]["claimName"]
        .clone();
    named("PersistentVolumeClaim", str_of(&claim));
    assert_eq!(str_of(&redis["spec"]["strategy"]["type"]), "Recreate");
    assert!(
        bytes_of(arg("--maxmemory")) < bytes_of(str_of(&server["resources"]["limits"]["memory"])),
        "maxmemory must stay under the container's memory limit"
    );
}

/// `${NAME:-default}` → default and `${NAME}` → empty: compose's interpolation with nothing set.
fn compose_defaults(text: &str) -> String {
    let mut out = text.to_owned();
    while let Some(i) = out.find("${") {
        let end = i + out[i..].find('}').unwrap();
        let inner = out[i + 2..end].to_owned();
        let value = inner.split_once(":-").map(|(_, d)| d).unwrap_or("");
        out.replace_range(i..=end, value);
    }
    out
}

#[test]
fn compose_runs_two_replicas_on_one_redis_and_its_config_loads() {
    let mut compose = docs(&read("deploy/docker-compose.yaml")).remove(0);
    compose.apply_merge().unwrap();
    let services = compose["services"].as_mapping().unwrap();
    let (redis_name, redis) = services
        .iter()
        .find(|(_, s)| {
            let image = str_of(&s["image"]);
            image.starts_with("valkey/valkey:") || image.starts_with("redis:")
        })
        .expect("a Redis (or Valkey) service");
    let redis_name = str_of(redis_name);
    assert!(
        redis["healthcheck"]["test"].is_sequence(),
        "the gateways wait for a healthy Redis"
    );
    let gateways: Vec<(&str, &Yaml)> = services
        .iter()
        .filter(|(_, s)| s["build"].is_mapping())
        .map(|(n, s)| (str_of(n), s))
        .collect();
    assert!(gateways.len() >= 2, "two gateway replicas");

    let mut host_ports = BTreeSet::new();
    for (name, gw) in &gateways {
        // Built from this repository with the shipped Dockerfile.
        let build = &gw["build"];
        let context = root().join("deploy").join(str_of(&build["context"]));
        assert_eq!(
            context.canonicalize().unwrap(),
            root().canonicalize().unwrap()
        );
        assert_eq!(str_of(&build["dockerfile"]), "deploy/Dockerfile");
        assert_eq!(
            str_of(&gw["environment"]["REDIS_URL"]),
            format!("redis://{redis_name}:6379/0"),
            "{name} reaches the Redis service"
        );
        assert!(
            gw["depends_on"][redis_name].is_mapping(),
            "{name} starts after Redis"
        );
        for p in gw["ports"].as_sequence().unwrap() {
            let p = str_of(p);
            assert!(
                p.starts_with("127.0.0.1:"),
                "{name} publishes {p} beyond loopback"
            );
            assert!(
                host_ports.insert(p.split(':').nth(1).unwrap().to_owned()),
                "{p} twice"
            );
        }
    }

    // Every replica runs the same config: the folder mounted where the image's CMD reads it.
    let (_, gw) = gateways[0];
    let mount = str_of(&gw["volumes"][0]);
    let (src, dst) = mount.split_once(':').unwrap();
    let dst = dst.trim_end_matches(":ro");
    assert_eq!(
        dst, "/etc/ai-gateway",
        "where deploy/Dockerfile's CMD reads gateway.yaml"
    );
    let dir = root().join("deploy").join(src);
    let yaml = std::fs::read_to_string(dir.join("gateway.yaml")).unwrap();
    assert!(read("deploy/Dockerfile").contains("\"-c\", \"/etc/ai-gateway/gateway.yaml\""));

    // Every variable set is one the config reads; the config loads with them.
    let env = gw["environment"].as_mapping().unwrap();
    let mut text = yaml.clone();
    for (k, v) in env {
        let name = str_of(k);
        assert!(
            yaml.contains(&format!("${{{name}")),
            "{name} is set but deploy/compose/gateway.yaml never reads it"
        );
        substitute(&mut text, name, &compose_defaults(str_of(v)));
    }
    // The image's environment (deploy/Dockerfile) opens the listeners beyond the container.
    substitute(&mut text, "GATEWAY_LISTEN", "0.0.0.0:8080");
    substitute(&mut text, "GATEWAY_ADMIN_LISTEN", "0.0.0.0:9090");
    let cfg = ai_gateway::config::Config::from_str_at(&text, &dir.join("gateway.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    for (_, gw) in &gateways {
        let published: Vec<u64> = gw["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| str_of(p).rsplit(':').next().unwrap().parse().unwrap())
            .collect();
        assert!(published.contains(&(cfg.listen.port() as u64)));
        assert!(published.contains(&(cfg.admin_listen.port() as u64)));
        let grace = humantime::parse_duration(str_of(&gw["stop_grace_period"])).unwrap();
        assert!(
            grace > cfg.grace_period,
            "docker would kill the gateway mid-drain"
        );
    }

    // What makes trying it show shared state: Redis backend, a limited client, a cached
    // scenario answered by the built-in mock.
    let raw = docs(&yaml).remove(0);
    assert_eq!(str_of(&raw["state"]["backend"]), "redis");
    assert!(str_of(&raw["state"]["url"]).starts_with("${REDIS_URL"));
    assert!(raw["clients"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|c| c["rpm"].as_u64().is_some()));
    let scenario = &raw["scenarios"][str_of(&raw["default_scenario"])];
    assert!(scenario["cache"]["ttl"].is_string());
    for t in scenario["targets"].as_sequence().unwrap() {
        let provider = str_of(&t["provider"]);
        assert_eq!(str_of(&raw["providers"][provider]["type"]), "mock");
    }
}
