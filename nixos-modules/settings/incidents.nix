# [incidents]: when a failing check is flapping or a crash loop, and when its
# incident resolves.
{
  mkSection,
  mkKey,
  types,
  duration,
  ...
}:

mkSection {
  path = [ "incidents" ];
  description = "When a failing check counts as flapping or as a crash loop, and when its incident resolves.";
  keys = {
    flap_window = mkKey {
      type = duration;
      agentDefault = "10m";
      description = "Window over which a unit's transitions are counted";
    };
    flap_threshold = mkKey {
      type = types.ints.u32;
      agentDefault = "6";
      description = "Transitions within `flap_window` that make the check flapping";
    };
    resolve_hold = mkKey {
      type = duration;
      agentDefault = "10s";
      description = "How long a failing check must pass before its incident resolves";
    };
    crash_loop_restarts = mkKey {
      type = types.ints.u32;
      agentDefault = "3";
      description = "Rise of NRestarts within `crash_loop_window` that is a crash loop";
    };
    crash_loop_window = mkKey {
      type = duration;
      agentDefault = "5m";
      description = "Window of `crash_loop_restarts`";
    };
  };
}
