-- Argo CD health check for freeatm.io/v1alpha1 SyntheticDataset, MaskPretrainJob and EvalJob.
-- Reads what the operator writes: status.phase, observedGeneration, the kstatus conditions (Ready, Stalled,
-- Reconciling) and progress. Succeeded is Healthy, Failed is Degraded, Suspended is Suspended; a workload that
-- waits, is pending or runs is Progressing (an Application syncing a pipeline stays Progressing until it ends).
local hs = {}

local function condition(conditions, ctype)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function message_of(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local status = obj.status
if status == nil or (status.phase == nil and status.conditions == nil) then
  hs.status = "Progressing"
  hs.message = "Waiting for the freeatm operator to reconcile the resource"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local conditions = status.conditions
local phase = status.phase
local ready = condition(conditions, "Ready")
local stalled = condition(conditions, "Stalled")

if phase == "Succeeded" then
  hs.status = "Healthy"
  local where = status.outputs and status.outputs.uri
  if where ~= nil then
    hs.message = "Succeeded: " .. where
  else
    hs.message = message_of(ready, "Succeeded")
  end
  return hs
end

if phase == "Failed" or (stalled ~= nil and stalled.status == "True") then
  hs.status = "Degraded"
  hs.message = message_of(condition(conditions, "Failed"), message_of(stalled, message_of(ready, "Failed")))
  return hs
end

if phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = message_of(condition(conditions, "Suspended"), "Suspended (spec.suspend is true)")
  return hs
end

if phase == "Waiting" then
  hs.status = "Progressing"
  if status.waitingFor ~= nil and #status.waitingFor > 0 then
    hs.message = "Waiting for " .. table.concat(status.waitingFor, ", ")
  else
    hs.message = message_of(condition(conditions, "DependenciesReady"), "Waiting for dependencies")
  end
  return hs
end

if phase == "Pending" or phase == "Running" then
  hs.status = "Progressing"
  local p = status.progress
  if p ~= nil and p.percent ~= nil then
    hs.message = phase .. ": " .. tostring(p.percent) .. "% done"
    if p.message ~= nil and p.message ~= "" then
      hs.message = hs.message .. " (" .. p.message .. ")"
    end
  else
    hs.message = message_of(condition(conditions, "Reconciling"), phase)
  end
  return hs
end

-- No (known) phase: fall back to the kstatus conditions alone.
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message_of(ready, "Ready")
  return hs
end
hs.status = "Progressing"
hs.message = message_of(ready, "Reconciling")
return hs
