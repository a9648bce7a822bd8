"""Local stand-ins for what sits between a client and the MLflow server on Google Cloud.

- `idp.LocalIdentityProvider`: Google's token endpoint (service-account JWT grant -> ID token)
  and the metadata server's identity endpoint, signing with a test key; `write_key_file` gives a
  service-account key JSON that google-auth uses unchanged.
- `cloudrun_front.CloudRunFront`: Cloud Run's front door (ID token check, 401/403, 32 MiB cap,
  run.app Host) in front of a real local server.
- `mlflow_server.MlflowServer`: a real `mlflow server` on SQLite in a temporary folder.
- `clock.FakeClock`: the injectable clock the three above and the client share in tests.
- `signed_urls.verify_v4`: what Cloud Storage checks on a V4 signed URL request (the emulator
  checks nothing), for hops in front of the emulator.
"""
