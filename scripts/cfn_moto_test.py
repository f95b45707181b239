#!/usr/bin/env python3
"""Creates deploy/fanfare.yaml in moto's CloudFormation (moto's server on a
loopback port, started and stopped here, in-process) and checks the result:

- the create-the-database path and the existing-database path each end in
  CREATE_COMPLETE with the outputs the walkthrough (deploy/README.md) uses;
- the browser crawler function exists only with BrowserImageUri: an image
  function with its memory, timeout, reserved concurrency and a role of its
  own that may write its logs and nothing else, and the task role may invoke
  it;
- what the first deploy depends on: no reserved concurrency unless asked, no
  deletion protection by default, the database's log group with retention, the
  pool sizes from the instance class, shutdown_grace pinned, the role task's
  SQL identical to deploy/db-role.sql;
- what a failed create's rollback needs (moto does not model rollbacks):
  deletion protection off by default, the database kept as a snapshot;
- the pool sizes of Mappings.DatabaseClass fit max_connections.

moto models some resources only as stubs (deploy/README.md lists them): this
proves the template's structure (references, conditions, outputs, dependency
order), not that AWS accepts every property.

Run by scripts/test with the venv's python; needs boto3, moto[server] and
cfn-lint (scripts/requirements-test.txt). No network beyond loopback.
"""

import ast
import contextlib
import io
import json
import logging
import os
import socket
import sys
import time
import warnings
import zipfile

import boto3
import cfnlint.decode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE = os.path.join(ROOT, "deploy", "fanfare.yaml")
ROLE_SQL = os.path.join(ROOT, "deploy", "db-role.sql")
REGION = "us-east-2"
BROWSER_IMAGE = "123456789012.dkr.ecr.us-east-2.amazonaws.com/fanfare-crawler-browser:1"
CONFIG_SECRET = []  # its ARN, once created


def fail(message):
    print(f"cfn_moto_test: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def template_json():
    # moto's own YAML loader mishandles `!GetAtt A.B.C`; cfn-lint's decoder
    # turns every short form into its long form.
    template, matches = cfnlint.decode.decode(TEMPLATE)
    check(not matches and template is not None, f"cannot decode {TEMPLATE}: {matches}")
    return template, json.dumps(template)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto():
    """moto's server on a free loopback port, in this process (so that the
    workaround below applies to it); stopped by main()."""
    from moto.rds.models import DBParameterGroup
    from moto.server import ThreadedMotoServer

    # moto 5.2.5 resolves `!Ref` of an AWS::RDS::DBParameterGroup to the
    # model object instead of its name (the class has no
    # physical_resource_id), and then fails creating the DBInstance that
    # names it. AWS returns the name.
    if not hasattr(DBParameterGroup, "physical_resource_id"):
        DBParameterGroup.physical_resource_id = property(lambda self: self.name)
    # moto resolves `!Ref` of a Number parameter to a number, so
    # `!Equals [!Ref CrawlerReservedConcurrency, "0"]` never holds; in AWS a
    # parameter's Ref is a string. Compare numbers with strings as strings.
    from moto.cloudformation import parsing

    original = parsing.parse_condition

    def parse_condition(condition, resources_map, condition_map):
        if isinstance(condition, dict) and list(condition) == ["Fn::Equals"]:
            values = [parsing.clean_json(v, resources_map) for v in condition["Fn::Equals"]]
            numbers = [isinstance(v, (int, float)) and not isinstance(v, bool) for v in values]
            if numbers[0] != numbers[1] and all(isinstance(v, (int, float, str)) for v in values):
                return str(values[0]) == str(values[1])
        return original(condition, resources_map, condition_map)

    parsing.parse_condition = parse_condition
    port = free_port()
    # Quiet: no request log, no warning per resource type moto only stubs.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    logging.getLogger("moto").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Tried to parse")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, f"http://127.0.0.1:{port}"


class Aws:
    def __init__(self, endpoint):
        self.session = boto3.session.Session(
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name=REGION,
        )
        self.endpoint = endpoint

    def __getattr__(self, service):
        return self.session.client(service, endpoint_url=self.endpoint)


def prerequisites(aws):
    """What the walkthrough has before deploying: a VPC with subnets, the
    certificate, the secrets, the crawler's zip in a bucket, a hosted zone."""
    ec2 = aws.ec2
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{REGION}{az}")["Subnet"]["SubnetId"]
        for i, az in enumerate("abab")
    ]
    existing_db_sg = ec2.create_security_group(GroupName="existing-db", Description="db", VpcId=vpc)["GroupId"]
    s3 = aws.s3
    s3.create_bucket(Bucket="artifacts", CreateBucketConfiguration={"LocationConstraint": REGION})
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as z:
        z.writestr("bootstrap", "#!/bin/sh\n")
    s3.put_object(Bucket="artifacts", Key="fanfare-crawler/1/bootstrap.zip", Body=code.getvalue())
    certificate = aws.acm.request_certificate(DomainName="fanfare.example.com", ValidationMethod="DNS")["CertificateArn"]
    sm = aws.secretsmanager

    def secret(name, value):
        return sm.create_secret(Name=name, SecretString=value)["ARN"]

    zone = aws.route53.create_hosted_zone(Name="example.com", CallerReference=str(time.time()))["HostedZone"]["Id"]
    return {
        "vpc": vpc,
        "public": subnets[:2],
        "private": subnets[2:],
        "certificate": certificate,
        "callback": secret("fanfare/callback-secret", "c" * 64),
        "admin": secret("fanfare/admin-token", "a" * 48),
        "config": CONFIG_SECRET.append(secret("fanfare/config", '[[schedules]]\nname = "x"\n')) or CONFIG_SECRET[0],
        "database_url": secret("fanfare/database-url", "postgres://fanfare_app:p@db.example:5432/fanfare"),
        "existing_db_sg": existing_db_sg,
        "zone": zone.rsplit("/", 1)[-1],
    }


def parameters(pre, **extra):
    values = {
        "VpcId": pre["vpc"],
        "VpcCidr": "10.0.0.0/16",
        "PublicSubnetIds": ",".join(pre["public"]),
        "PrivateSubnetIds": ",".join(pre["private"]),
        "DomainName": "fanfare.example.com",
        "CertificateArn": pre["certificate"],
        "ImageUri": "123456789012.dkr.ecr.us-east-2.amazonaws.com/fanfare:1",
        "CallbackSecretArn": pre["callback"],
        "AdminTokenArn": pre["admin"],
        "CrawlerCodeS3Bucket": "artifacts",
        "CrawlerCodeS3Key": "fanfare-crawler/1/bootstrap.zip",
    }
    values.update(extra)
    return [{"ParameterKey": k, "ParameterValue": str(v)} for k, v in values.items()]


def create(aws, body, name, params):
    cfn = aws.cloudformation
    cfn.create_stack(
        StackName=name,
        TemplateBody=body,
        Parameters=params,
        Capabilities=["CAPABILITY_NAMED_IAM"],
    )
    deadline = time.monotonic() + 60
    while True:
        stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
        if not stack["StackStatus"].endswith("_IN_PROGRESS"):
            return stack
        check(time.monotonic() < deadline, f"{name}: still {stack['StackStatus']}")
        time.sleep(0.2)


def outputs(stack):
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def container(aws, family):
    """The first container of the latest revision of a task definition family."""
    return aws.ecs.describe_task_definition(taskDefinition=family)["taskDefinition"]["containerDefinitions"][0]


def check_mapping(template):
    """8 tasks x (pool + readers + 1) + 10 reserved fit each class's max_connections."""
    for cls, row in template["Mappings"]["DatabaseClass"].items():
        gib, max_conn, pool = int(row["MemoryGiB"]), int(row["MaxConnections"]), int(row["PoolSize"])
        readers = int(row["ReaderPoolSize"])
        formula = min(int(0.72 * gib * 1024**3 / 9531392), 5000)
        check(max_conn == formula, f"{cls}: MaxConnections {max_conn}, the formula gives {formula}")
        check(8 * (pool + readers + 1) + 10 <= max_conn,
              f"{cls}: pool {pool} and readers {readers} overflow {max_conn}")
        check(1 <= pool <= 16, f"{cls}: pool {pool} out of 1..16")
        check(1 <= readers <= 4, f"{cls}: readers {readers} out of 1..4")
    allowed = template["Parameters"]["DatabaseInstanceClass"]["AllowedValues"]
    check(sorted(allowed) == sorted(template["Mappings"]["DatabaseClass"]), "every allowed class is mapped")
    check(int(template["Parameters"]["DesiredCount"]["MaxValue"]) == 4, "DesiredCount at most 4")


def check_created_database(aws, stack):
    name = "fanfare-new"
    check(stack["StackStatus"] == "CREATE_COMPLETE", f"{name}: {stack['StackStatus']} {stack.get('StackStatusReason')}")
    out = outputs(stack)
    for key in [
        "PublicUrl", "LoadBalancerDnsName", "TargetGroupArn", "CrawlerFunctionName", "CrawlerFunctionArn",
        "ClusterName", "ServiceName", "ServiceLogGroupName", "ServiceSecurityGroupId", "DatabaseEndpoint",
        "AlarmTopicArn", "DatabaseRoleTaskDefinition",
        "DatabaseRoleNetworkConfiguration", "DatabasePoolSize",
    ]:
        check(out.get(key), f"{name}: output {key} missing: {sorted(out)}")
    # DatabaseUrlSecretInUse is not checked here: moto stubs
    # AWS::SecretsManager::Secret (no ARN to refer to); the existing-database
    # path checks it.
    check(out["PublicUrl"] == "https://fanfare.example.com", out["PublicUrl"])
    check(out["CrawlerFunctionName"] == f"{name}-crawler", out["CrawlerFunctionName"])
    check("BrowserFunctionName" not in out and "BrowserFunctionArn" not in out, sorted(out))
    functions = [f["FunctionName"] for f in aws.__getattr__("lambda").list_functions()["Functions"]]
    check(f"{name}-crawler-browser" not in functions, f"no browser function without its image: {functions}")
    check(out["DatabasePoolSize"] == "6", f"pool for db.t4g.micro: {out['DatabasePoolSize']}")
    check(out["DatabaseRoleNetworkConfiguration"].startswith("awsvpcConfiguration={subnets=[subnet-"),
          out["DatabaseRoleNetworkConfiguration"])

    # No reservation unless asked: a new account's quota may be 10.
    concurrency = aws.__getattr__("lambda").get_function_concurrency(FunctionName=out["CrawlerFunctionName"])
    check("ReservedConcurrentExecutions" not in concurrency, f"reserved concurrency: {concurrency}")

    # Deletion protection off by default; the instance named for its log group.
    db = aws.rds.describe_db_instances(DBInstanceIdentifier="fanfare-db")["DBInstances"][0]
    check(db["DeletionProtection"] is False, "database deletion protection defaults to off")
    check(db["EngineVersion"] == "16", db["EngineVersion"])
    groups = aws.logs.describe_log_groups(logGroupNamePrefix="/aws/rds/instance/fanfare-db/")["logGroups"]
    check([(g["logGroupName"], g.get("retentionInDays")) for g in groups]
          == [("/aws/rds/instance/fanfare-db/postgresql", 30)], f"RDS log group: {groups}")
    lb = next(b["LoadBalancerArn"] for b in aws.elbv2.describe_load_balancers()["LoadBalancers"]
              if b["DNSName"] == out["LoadBalancerDnsName"])
    attrs = {a["Key"]: a["Value"] for a in aws.elbv2.describe_load_balancer_attributes(LoadBalancerArn=lb)["Attributes"]}
    check(attrs.get("deletion_protection.enabled") == "false", f"load balancer attributes: {attrs}")

    # The service's container: pool size, pinned grace, the config secret.
    fanfare = container(aws, f"{name}-fanfare")
    env = {e["name"]: e["value"] for e in fanfare["environment"]}
    check(env.get("FANFARE__DATABASE__MAX_CONNECTIONS") == "6", env)
    check(env.get("FANFARE__DATABASE__READER_CONNECTIONS") == "1", env)
    check(env.get("FANFARE__SERVER__SHUTDOWN_GRACE") == "20s", env)
    check(env.get("FANFARE__SERVER__TRUSTED_PROXIES") == "10.0.0.0/16", env)
    check(fanfare["stopTimeout"] == 30, fanfare.get("stopTimeout"))
    # (valueFrom of the stack's own secrets is empty: moto stubs them.)
    secrets = {s["name"]: s.get("valueFrom") for s in fanfare["secrets"]}
    check(set(secrets) == {"FANFARE__DATABASE__URL", "FANFARE__SECURITY__CALLBACK_SECRET",
                           "FANFARE__SECURITY__ADMIN_TOKEN", "FANFARE_CONFIG_TOML"}, secrets)
    check(secrets["FANFARE_CONFIG_TOML"] == CONFIG_SECRET[0], secrets)

    # The role task runs exactly deploy/db-role.sql.
    role = container(aws, f"{name}-db-role")
    role_env = {e["name"]: e["value"] for e in role["environment"]}
    with open(ROLE_SQL) as f:
        check(role_env.get("DB_ROLE_SQL") == f.read(), "DB_ROLE_SQL differs from deploy/db-role.sql")
    check({s["name"] for s in role["secrets"]} == {"PGUSER", "PGPASSWORD", "APP_ROLE", "APP_PASSWORD"}, role["secrets"])


def check_existing_database(aws, stack, pre):
    name = "fanfare-existing"
    check(stack["StackStatus"] == "CREATE_COMPLETE", f"{name}: {stack['StackStatus']} {stack.get('StackStatusReason')}")
    out = outputs(stack)
    check(out.get("DatabaseUrlSecretInUse") == pre["database_url"], out)
    check("DatabaseEndpoint" not in out and "DatabaseRoleTaskDefinition" not in out, sorted(out))
    check(out.get("DatabasePoolSize") == "12", out)
    env = {e["name"]: e["value"] for e in container(aws, f"{name}-fanfare")["environment"]}
    check(env.get("FANFARE__DATABASE__MAX_CONNECTIONS") == "12", env)
    # No database of its own: still only the first stack's instance.
    instances = [db["DBInstanceIdentifier"] for db in aws.rds.describe_db_instances()["DBInstances"]]
    check(instances == ["fanfare-db"], f"no database created: {instances}")
    families = aws.ecs.list_task_definition_families(familyPrefix=f"{name}-")["families"]
    check(families == [f"{name}-fanfare"], f"no role task: {families}")
    concurrency = aws.__getattr__("lambda").get_function_concurrency(FunctionName=f"{name}-crawler")
    check(concurrency.get("ReservedConcurrentExecutions") == 5, f"reserved concurrency when asked: {concurrency}")
    check_browser_function(aws, name, out)


def role_policies(aws, role_name):
    iam = aws.iam
    names = iam.list_role_policies(RoleName=role_name)["PolicyNames"]
    attached = iam.list_attached_role_policies(RoleName=role_name)["AttachedPolicies"]
    check(not attached, f"{role_name}: no managed policies: {attached}")
    return {n: iam.get_role_policy(RoleName=role_name, PolicyName=n)["PolicyDocument"] for n in names}


def statements(document):
    # moto's CloudFormation stores an inline policy as the Python repr of
    # the document (single quotes), AWS as JSON.
    if isinstance(document, str):
        document = ast.literal_eval(document)
    listed = document["Statement"]
    return listed if isinstance(listed, list) else [listed]


def as_list(value):
    return value if isinstance(value, list) else [value]


def check_browser_function(aws, name, out):
    """The existing-database stack is created with BrowserImageUri (and a
    reservation, a larger memory): the browser crawler as an image function
    with a role that may only write its own log group, invocable by the task
    role and nothing broader."""
    lam = aws.__getattr__("lambda")
    function_name = f"{name}-crawler-browser"
    check(out.get("BrowserFunctionName") == function_name, out)
    function = lam.get_function(FunctionName=function_name)
    config = function["Configuration"]
    check(out.get("BrowserFunctionArn") == config["FunctionArn"], (out, config["FunctionArn"]))
    # (moto's CloudFormation drops PackageType and Architectures; main()
    # checks them in the template.)
    check(function["Code"].get("ImageUri") == BROWSER_IMAGE, function["Code"])
    check(config["MemorySize"] == 2048, f"memory when asked: {config['MemorySize']}")
    check(config["Timeout"] == 150, f"timeout: {config['Timeout']}")
    # Like the crawler: no environment of the stack's (the image sets FANFARE_CHROMIUM).
    check(not config.get("Environment", {}).get("Variables"), config.get("Environment"))
    with open(os.path.join(ROOT, "Dockerfile.browser")) as f:
        check("FANFARE_CHROMIUM=/usr/bin/chromium" in f.read(), "Dockerfile.browser sets FANFARE_CHROMIUM")
    concurrency = lam.get_function_concurrency(FunctionName=function_name)
    check(concurrency.get("ReservedConcurrentExecutions") == 3, f"browser reserved concurrency: {concurrency}")

    # Its own role, not the crawler's, allowed to write its log group only.
    role_name = config["Role"].rsplit("/", 1)[-1]
    crawler_role = lam.get_function(FunctionName=f"{name}-crawler")["Configuration"]["Role"]
    check(config["Role"] != crawler_role, "the browser function has a role of its own")
    trust = statements(aws.iam.get_role(RoleName=role_name)["Role"]["AssumeRolePolicyDocument"])
    check([s["Principal"] for s in trust] == [{"Service": "lambda.amazonaws.com"}], trust)
    allowed = [s for doc in role_policies(aws, role_name).values() for s in statements(doc)]
    log_group = f"/aws/lambda/{name}-crawler-browser"
    groups = aws.logs.describe_log_groups(logGroupNamePrefix=log_group)["logGroups"]
    check([(g["logGroupName"], g.get("retentionInDays")) for g in groups] == [(log_group, 30)], groups)
    check(len(allowed) == 1, f"browser role: one statement: {allowed}")
    check(sorted(as_list(allowed[0]["Action"])) == ["logs:CreateLogStream", "logs:PutLogEvents"], allowed)
    check([r.split(":log-group:")[-1] for r in as_list(allowed[0]["Resource"])]
          in ([log_group], [log_group + ":*"]), allowed)

    # The task role may invoke it (and its versions), and no function beyond the two crawlers.
    task_role = next(r["RoleName"] for r in aws.iam.list_roles()["Roles"]
                     if r["RoleName"].startswith(f"{name}-TaskRole"))
    invoke = [s for doc in role_policies(aws, task_role).values() for s in statements(doc)
              if "lambda:InvokeFunction" in as_list(s["Action"])]
    # (moto leaves an `!If` that chose AWS::NoValue in a list as None.)
    resources = sorted(r for s in invoke for r in as_list(s["Resource"]) if r is not None)
    crawler_arn = out["CrawlerFunctionArn"]
    browser_arn = out["BrowserFunctionArn"]
    check(resources == sorted([crawler_arn, f"{crawler_arn}:*", browser_arn, f"{browser_arn}:*"]),
          f"task role invokes: {resources}")


def check_browser_template(template):
    """What moto's CloudFormation does not carry over to its Lambda model:
    the browser function is an image, of the architecture the parameter
    names, with a full vCPU's memory unless asked for more."""
    params, function = template["Parameters"], template["Resources"]["BrowserFunction"]
    props = function["Properties"]
    check(function.get("Condition") == "HasBrowserFunction", "the browser function is optional")
    check(props.get("PackageType") == "Image" and "Runtime" not in props and "Handler" not in props, props)
    check(props.get("Architectures") == [{"Ref": "BrowserArchitecture"}], props.get("Architectures"))
    check(params["BrowserImageUri"]["Default"] == "", "no browser function by default")
    check(int(params["BrowserMemorySize"]["Default"]) >= 1769, "at least one full vCPU by default")
    check(int(params["BrowserMemorySize"]["MinValue"]) >= 1769, "never less than one full vCPU")
    check(params["BrowserReservedConcurrency"]["Default"] == 0, "no browser reservation by default")


def check_rollback_preconditions(template):
    """moto does not model a failed create's rollback (a resource that fails
    leaves its stack CREATE_IN_PROGRESS), so check what a clean rollback in
    AWS needs: nothing deletion-protected by default, the database kept as a
    snapshot, nothing else retained but the two generated database secrets."""
    params, resources = template["Parameters"], template["Resources"]
    check(params["DeletionProtection"]["Default"] == "false", "DeletionProtection defaults to false")
    check(params["CrawlerReservedConcurrency"]["Default"] == 0, "no reserved concurrency by default")
    db = resources["Database"]
    check((db.get("DeletionPolicy"), db.get("UpdateReplacePolicy")) == ("Snapshot", "Snapshot"), "database snapshot policies")
    check(db["Properties"]["DeletionProtection"] == {"Ref": "DeletionProtection"}, "database protection is the parameter")
    lb_attrs = resources["LoadBalancer"]["Properties"]["LoadBalancerAttributes"]
    check({"Key": "deletion_protection.enabled", "Value": {"Ref": "DeletionProtection"}} in lb_attrs,
          "load balancer protection is the parameter")
    retained = sorted(k for k, r in resources.items() if r.get("DeletionPolicy") == "Retain")
    check(retained == ["DatabaseAppSecret", "DatabaseMasterSecret"], f"retained: {retained}")


def main():
    started = time.monotonic()
    template, body = template_json()
    check_mapping(template)
    check_browser_template(template)
    check_rollback_preconditions(template)
    server, endpoint = start_moto()
    # moto prints a line for an attribute it does not model; keep it out of
    # scripts/test's output (failures go to stderr).
    quiet = contextlib.redirect_stdout(io.StringIO())
    quiet.__enter__()
    try:
        aws = Aws(endpoint)
        pre = prerequisites(aws)
        new = create(aws, body, "fanfare-new", parameters(
            pre, HostedZoneId=pre["zone"], ConfigSecretArn=pre["config"], AlarmEmail="ops@example.com"))
        check_created_database(aws, new)
        existing = create(aws, body, "fanfare-existing", parameters(
            pre,
            DatabaseUrlSecretArn=pre["database_url"],
            ExistingDatabaseSecurityGroupId=pre["existing_db_sg"],
            DatabasePoolSize=12,
            CrawlerReservedConcurrency=5,
            BrowserImageUri=BROWSER_IMAGE,
            BrowserMemorySize=2048,
            BrowserReservedConcurrency=3,
        ))
        check_existing_database(aws, existing, pre)
    except Exception as e:  # an API error: show moto's side too
        fail(f"{type(e).__name__}: {e}")
    finally:
        quiet.__exit__(None, None, None)
        server.stop()
    print(f"cfn_moto_test: fanfare-new (new database) and fanfare-existing (existing database, browser crawler) "
          f"CREATE_COMPLETE, outputs and resources as expected ({time.monotonic() - started:.1f}s)")


if __name__ == "__main__":
    main()
