# [remediation]: which runbook answers which check. Written only when set:
# an agent that predates the table refuses it.
{
  mkSection,
  types,
  literalExpression,
  ...
}:

mkSection {
  path = [ "remediation" ];
  kind = "map";
  description = ''
    Maps a check name to the runbook that answers it (a runbook ID such as
    `RB-SERVICE-001`), to `"escalate"` (straight to a person) or to `"none"`.
    Unset: the table is not written and the agent's own mapping applies;
    it needs an agent that reads `[remediation]`, which `checkConfig` proves.
  '';
  valueType = types.str;
  example = literalExpression ''
    {
      unit_failed = "RB-SERVICE-001";
      crash_loop = "escalate";
    }
  '';
}
