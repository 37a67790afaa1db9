#!/usr/bin/env bash
# Register a Kubernetes stack for cxr. Needs: a kube context, an S3 bucket, a
# reachable MLflow tracking server, a container registry. Fill in the variables.
# Component names match steps/names.py (the steps ask for the tracker by name).
set -euo pipefail
: "${KUBE_CONTEXT:?}" "${S3_PATH:?e.g. s3://my-bucket/zenml}" "${MLFLOW_URI:?e.g. https://mlflow.example.org}"
: "${REGISTRY_URI:?e.g. ghcr.io/my-org}" "${NAMESPACE:=cxr}"

zenml integration install kubernetes s3 --yes   # not tensorflow / great_expectations: see README
zenml orchestrator register cxr_k8s --flavor=kubernetes --kubernetes_context="${KUBE_CONTEXT}" --kubernetes_namespace="${NAMESPACE}"
zenml artifact-store register cxr_s3 --flavor=s3 --path="${S3_PATH}"
zenml container-registry register cxr_registry --flavor=default --uri="${REGISTRY_URI}"
# ZenML's MLflow tracker takes exactly one way to authenticate to a remote server (MLflow's own
# variables), kept in a ZenML secret rather than in the component's configuration.
if [[ -n "${MLFLOW_TRACKING_TOKEN:-}" ]]; then
  zenml secret create cxr_mlflow --tracking_token="${MLFLOW_TRACKING_TOKEN}"
  auth=(--tracking_token="{{cxr_mlflow.tracking_token}}")
elif [[ -n "${MLFLOW_TRACKING_USERNAME:-}" && -n "${MLFLOW_TRACKING_PASSWORD:-}" ]]; then
  zenml secret create cxr_mlflow --tracking_username="${MLFLOW_TRACKING_USERNAME}" \
    --tracking_password="${MLFLOW_TRACKING_PASSWORD}"
  auth=(--tracking_username="{{cxr_mlflow.tracking_username}}" --tracking_password="{{cxr_mlflow.tracking_password}}")
else
  echo "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN, for ${MLFLOW_URI}" >&2
  exit 2
fi
zenml experiment-tracker register cxr_mlflow_tracker --flavor=mlflow --tracking_uri="${MLFLOW_URI}" "${auth[@]}"
zenml model-registry register cxr_mlflow_registry --flavor=mlflow
zenml stack register cxr_k8s -o cxr_k8s -a cxr_s3 -c cxr_registry -e cxr_mlflow_tracker -r cxr_mlflow_registry --set
# The same stack for pods inside the cluster (the retraining CronJob, infra/k8s/retraining): the
# orchestrator reads the pod's service account instead of a kube context.
zenml orchestrator register cxr_k8s_incluster --flavor=kubernetes --incluster=True --kubernetes_namespace="${NAMESPACE}"
zenml stack register cxr_k8s_incluster -o cxr_k8s_incluster -a cxr_s3 -c cxr_registry -e cxr_mlflow_tracker \
  -r cxr_mlflow_registry
