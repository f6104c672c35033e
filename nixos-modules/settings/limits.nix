# [limits]: the rate limit over all runbooks and targets.
{
  mkSection,
  mkKey,
  types,
  ...
}:

mkSection {
  path = [ "limits" ];
  description = "The rate limit over all runbooks and all targets.";
  keys.global_per_hour = mkKey {
    type = types.ints.u32;
    agentDefault = "20";
    description = "Runbook runs per hour, all runbooks and all targets together";
  };
}
