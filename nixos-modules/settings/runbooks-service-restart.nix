# [runbooks.service_restart]: RB-SERVICE-001, restarting a failed unit.
{
  mkSection,
  mkKey,
  types,
  duration,
  ...
}:

mkSection {
  path = [
    "runbooks"
    "service_restart"
  ];
  description = "RB-SERVICE-001, which restarts a failed unit (or starts a failed oneshot again), and its own rate limits.";
  keys = {
    job_timeout = mkKey {
      type = duration;
      agentDefault = "60s";
      description = "How long to wait for systemd's job result; for a backup unit, longer than the longest backup";
    };
    settle = mkKey {
      type = duration;
      agentDefault = "10s";
      description = "How long the unit must stay active to count as fixed";
    };
    max_runs = mkKey {
      type = types.ints.u32;
      agentDefault = "3";
      description = "Runs per unit within `window`";
    };
    window = mkKey {
      type = duration;
      agentDefault = "30m";
      description = "Window of `max_runs`";
    };
    min_interval = mkKey {
      type = duration;
      agentDefault = "5m";
      description = "Least time between two runs on the same unit";
    };
  };
}
